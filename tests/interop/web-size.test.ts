// The page's one size parser (web/lib/size.ts) reads a size as qemu-img does: the virtual size
// `qemu-img create` gives each text is the number the parser returns; hex and junk as documented.
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseSize } from '../../web/lib/size.ts';
import { createImage, makeTempDir, qemuInfo, removeDir } from '../helpers/qemu.ts';

const dir = makeTempDir('qcowscope-size-');
afterAll(() => removeDir(dir));

describe('parseSize', () => {
  it.each(['4096', '64k', '64K', '900M', '1.5G', '2T', '512b'])('reads %s as qemu-img create does', (text) => {
    const file = path.join(dir, `${text}.qcow2`);
    createImage(file, text);
    expect(parseSize(text)).toBe(qemuInfo(file)['virtual-size']);
  });

  it('takes hex, KiB spellings and spaces; refuses what names no byte count', () => {
    expect(parseSize('0x10000')).toBe(65536);
    expect(parseSize(' 0x1k ')).toBe(1024);
    expect(parseSize('64KiB')).toBe(parseSize('64k'));
    expect(parseSize('900 MB')).toBe(parseSize('900M'));
    for (const bad of ['', '12zz', '-1', 'k', '0x', '1.5.5M', '1Q']) expect(parseSize(bad)).toBeNull();
    expect(parseSize('16E')).toBeNull(); // past 2^53: no exact number
  });
});
