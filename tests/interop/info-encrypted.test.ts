// `info` of encrypted images (LUKS in several cipher setups, the legacy AES method, LUKS over a
// backing file): the `encrypt` block decoded from the LUKS header and every other field, in JSON
// and in the human form, byte for byte as qemu-img 7.2 prints them. No key is ever needed.
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeDir, qemuImgCreateEncrypted, qemuImgOk } from '../helpers/qemu.ts';
import { cliBundle } from '../helpers/cli.ts';
import { runCliOk } from './read-support.ts';
import { spawnSmall } from '../helpers/spawner.ts';

const SECRET = ['--object', 'secret,id=s0,data=not-a-real-key'];
const setups: Array<{ name: string; file: string; args: string[] }> = [
  { name: 'LUKS, default cipher (aes-256-xts-plain64, sha256)', file: 'luks.qcow2',
    args: ['-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', 'luks.qcow2', '16M'] },
  { name: 'LUKS, aes-128-cbc-essiv:sha256 with sha512 and an external data file', file: 'essiv.qcow2',
    args: ['-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha512,data_file=essiv.raw', 'essiv.qcow2', '1M'] },
  { name: 'LUKS, twofish-256-cbc-plain, 4 KiB clusters', file: 'twofish.qcow2',
    args: ['-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.cipher-alg=twofish-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain,cluster_size=4096', 'twofish.qcow2', '8M'] },
  { name: 'legacy AES (crypt_method 1)', file: 'aes.qcow2',
    args: ['-o', 'encrypt.format=aes,encrypt.key-secret=s0', 'aes.qcow2', '1M'] },
  { name: 'LUKS overlay of a plain backing file', file: 'overlay.qcow2',
    args: ['-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', '-b', 'base.qcow2', '-F', 'qcow2', 'overlay.qcow2'] },
];

let dir = '';
let bin = '';
beforeAll(async () => {
  bin = await cliBundle();
  dir = makeTempDir('qcowscope-encrypted-');
  qemuImgOk(['create', '-q', '-f', 'qcow2', path.join(dir, 'base.qcow2'), '4M']);
  for (const s of setups) qemuImgCreateEncrypted(['-q', '-f', 'qcow2', ...SECRET, ...s.args], dir);
}, 120_000);
afterAll(() => removeDir(dir));

function qemuImgText(args: string[]): string {
  const r = spawnSmall('qemu-img', args, { cwd: dir });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

describe.each(setups)('$name', ({ file }) => {
  it('info --json is qemu-img info --output=json, byte for byte', () => {
    const ours = runCliOk(bin, ['info', '--json', file], { cwd: dir });
    const theirs = qemuImgText(['info', '--output=json', file]);
    expect(ours).toBe(theirs);
    expect((JSON.parse(ours) as { encrypted?: boolean }).encrypted).toBe(true);
  });
  it('info (human) is qemu-img info, byte for byte', () => {
    expect(runCliOk(bin, ['info', file], { cwd: dir })).toBe(qemuImgText(['info', file]));
  });
});
