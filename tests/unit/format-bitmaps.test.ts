// The persistent-bitmap directory on bytes (docs/qcow2-format.md §1.9): entries decoded, and the
// checks QEMU's bitmap_list_load/check_dir_entry make on open, with QEMU's messages.
import { describe, expect, it } from 'vitest';
import { bitmapInfoFlags, parseBitmapDirectory } from '../../core/format/bitmaps.ts';

const CS = 65536;
const VSIZE = 64 * 1024 * 1024;

interface E { offset?: number; size?: number; flags?: number; type?: number; gran?: number; name?: string; extra?: number }

function dir(...entries: E[]): Uint8Array {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const name = Buffer.from(e.name ?? 'b');
    const extra = e.extra ?? 0;
    const len = Math.ceil((24 + name.length + extra) / 8) * 8;
    const b = Buffer.alloc(len);
    b.writeBigUInt64BE(BigInt(e.offset ?? 0x90000), 0);
    b.writeUInt32BE(e.size ?? 1, 8);
    b.writeUInt32BE(e.flags ?? 2, 12);
    b[16] = e.type ?? 1;
    b[17] = e.gran ?? 16;
    b.writeUInt16BE(name.length, 18);
    b.writeUInt32BE(extra, 20);
    name.copy(b, 24 + extra);
    parts.push(b);
  }
  return new Uint8Array(Buffer.concat(parts));
}

const msg = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  return 'no error';
};

describe('bitmap directory', () => {
  it('decodes entries, 8-aligned, with their flags as qemu-img info names them', () => {
    const d = dir({ name: 'b0', flags: 2 }, { name: 'second bitmap', gran: 20, flags: 3, offset: 2 ** 40 }, { name: 'x', flags: 0 });
    const list = parseBitmapDirectory(d, 3, CS, VSIZE);
    expect(list.map((b) => [b.name, b.granularityBits, b.bitmapTableOffset, bitmapInfoFlags(b.flags)])).toEqual([
      ['b0', 16, 0x90000, ['auto']], ['second bitmap', 20, 2 ** 40, ['in-use', 'auto']], ['x', 16, 0x90000, []],
    ]);
    expect(list.map((b) => b.entryOffset)).toEqual([0, 32, 72]);
  });

  it('refuses what QEMU refuses, with its messages', () => {
    expect(msg(() => parseBitmapDirectory(new Uint8Array(0), 1, CS, VSIZE))).toBe('Requested bitmap directory size is zero');
    expect(msg(() => parseBitmapDirectory(dir({}), 2, CS, VSIZE))).toBe('Less bitmaps found than specified in header extension');
    expect(msg(() => parseBitmapDirectory(dir({}, {}), 1, CS, VSIZE))).toBe('More bitmaps found than specified in header extension');
    expect(msg(() => parseBitmapDirectory(dir({ extra: 8 }), 1, CS, VSIZE))).toBe('Bitmap extra data is not supported');
    expect(msg(() => parseBitmapDirectory(dir({}).subarray(0, 20), 1, CS, VSIZE))).toBe('Broken bitmap directory');
    for (const bad of [{ gran: 8 }, { gran: 32 }, { type: 2 }, { flags: 4 }, { offset: 0 }, { offset: 0x90200 }, { size: 0 }, { size: 0x8000001 }]) {
      expect(msg(() => parseBitmapDirectory(dir({ name: 'bm', ...bad }), 1, CS, VSIZE)), JSON.stringify(bad)).toBe("Bitmap 'bm' doesn't satisfy the constraints");
    }
  });

  it('a table too small for the disk is refused unless the bitmap is in use', () => {
    // one table entry maps 64 KiB · 8 · 2^9 = 256 MiB of disk at granularity 2^9
    expect(() => parseBitmapDirectory(dir({ gran: 9 }), 1, CS, 256 * 1024 * 1024)).not.toThrow();
    expect(msg(() => parseBitmapDirectory(dir({ gran: 9, name: 'small' }), 1, CS, 256 * 1024 * 1024 + 512))).toBe("Bitmap 'small' doesn't satisfy the constraints");
    expect(() => parseBitmapDirectory(dir({ gran: 9, flags: 1 }), 1, CS, 256 * 1024 * 1024 + 512)).not.toThrow();
  });
});
