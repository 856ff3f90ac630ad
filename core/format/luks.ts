// The LUKS1 header of an encrypted qcow2 image (the area the crypto header extension points at),
// decoded into what `qemu-img info` reports about it (QEMU's QCryptoBlockInfoLUKS). No key
// material is used: qcowscope reads the layout, it never decrypts.
import { be16, be32 } from './bytes.ts';

/** Bytes of the LUKS1 header: the fixed part (208 bytes) and 8 key slots of 48 bytes. */
export const LUKS_HEADER_SIZE = 592;
const LUKS_MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]; // "LUKS\xba\xbe"
const LUKS_SECTOR = 512;
const LUKS_SLOTS = 8;
const LUKS_SLOT_ENABLED = 0x00ac71f3;

export interface LuksSlotInfo {
  active: boolean;
  iters?: number;
  'key-offset': number;
  stripes?: number;
}

/** Fields in the order qemu-img 7.2 prints them. */
export interface LuksInfo {
  'ivgen-alg': string;
  'hash-alg': string;
  'cipher-alg': string;
  uuid: string;
  'ivgen-hash-alg'?: string;
  format: 'luks';
  'cipher-mode': string;
  slots: LuksSlotInfo[];
  'payload-offset': number;
  'master-key-iters': number;
}

function cString(b: Uint8Array, at: number, size: number): string {
  let end = at;
  while (end < at + size && b[end] !== 0) end++;
  return String.fromCharCode(...b.subarray(at, end));
}

/** QEMU's qcrypto_block_luks_cipher_name_lookup: LUKS cipher name + key bytes → QAPI name. */
function cipherAlg(name: string, keyBytes: number): string | null {
  const sized: Record<string, number[]> = { aes: [16, 24, 32], serpent: [16, 24, 32], twofish: [16, 24, 32], cast5: [16] };
  if (name === 'sm4' && keyBytes === 16) return 'sm4';
  if (sized[name]?.includes(keyBytes)) return `${name}-${keyBytes * 8}`;
  return null;
}

/**
 * Decode a LUKS1 header; null when the bytes are not one (bad magic or version, an unknown
 * cipher or mode string), in which case qemu-img could not open the image either.
 */
export function parseLuksHeader(b: Uint8Array): LuksInfo | null {
  if (b.length < LUKS_HEADER_SIZE) return null;
  if (LUKS_MAGIC.some((v, i) => b[i] !== v) || be16(b, 6) !== 1) return null;
  const cipherName = cString(b, 8, 32);
  const modeSpec = cString(b, 40, 32); // "xts-plain64", "cbc-essiv:sha256"
  const hashAlg = cString(b, 72, 32);
  const dash = modeSpec.indexOf('-');
  if (dash < 0) return null;
  const mode = modeSpec.slice(0, dash);
  let ivgen = modeSpec.slice(dash + 1);
  let ivgenHash: string | undefined;
  const colon = ivgen.indexOf(':');
  if (colon >= 0) {
    ivgenHash = ivgen.slice(colon + 1);
    ivgen = ivgen.slice(0, colon);
  }
  const keyBytes = be32(b, 108);
  const alg = cipherAlg(cipherName, mode === 'xts' ? keyBytes / 2 : keyBytes);
  if (!alg) return null;
  const slots: LuksSlotInfo[] = [];
  for (let i = 0; i < LUKS_SLOTS; i++) {
    const at = 208 + i * 48;
    const active = be32(b, at) === LUKS_SLOT_ENABLED;
    const keyOffset = be32(b, at + 40) * LUKS_SECTOR;
    slots.push(active ? { active, iters: be32(b, at + 4), 'key-offset': keyOffset, stripes: be32(b, at + 44) } : { active, 'key-offset': keyOffset });
  }
  const info: LuksInfo = {
    'ivgen-alg': ivgen,
    'hash-alg': hashAlg,
    'cipher-alg': alg,
    uuid: cString(b, 168, 40),
    format: 'luks',
    'cipher-mode': mode,
    slots,
    'payload-offset': be32(b, 104) * LUKS_SECTOR,
    'master-key-iters': be32(b, 164),
  };
  if (ivgen === 'essiv' && ivgenHash !== undefined) {
    // qemu-img's order puts it after the uuid
    const { format, 'cipher-mode': cm, slots: sl, 'payload-offset': po, 'master-key-iters': mk, ...head } = info;
    return { ...head, 'ivgen-hash-alg': ivgenHash, format, 'cipher-mode': cm, slots: sl, 'payload-offset': po, 'master-key-iters': mk };
  }
  return info;
}
