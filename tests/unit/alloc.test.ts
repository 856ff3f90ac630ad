// core/image/allocator.ts: refcount updates of every width, first-fit allocation, refcount block
// allocation and refcount-table growth, judged by qemu-img check (allocated-but-unreferenced
// clusters are exactly the leaks it reports; after freeing them the image is clean).
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { allocClusters, freeClusters, updateRefcount } from '../../core/image/allocator.ts';
import { canIncrement, getClusterRefcount } from '../../core/image/refcount.ts';
import { Journal } from '../../core/image/journal.ts';
import { isQcowError } from '../../core/errors.ts';
import { createImage, qemuCheck } from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

const tmp = useTempDir('qcowscope-alloc-');

async function openMem(file: string): Promise<{ img: Qcow2Image; mem: MemoryStore }> {
  const mem = new MemoryStore(new Uint8Array(fs.readFileSync(file)), { name: file });
  const img = await Qcow2Image.open(mem, { writable: true });
  return { img, mem };
}

function save(mem: MemoryStore, file: string): void {
  fs.writeFileSync(file, mem.bytes());
}

describe('allocClusters / freeClusters', () => {
  for (const refcountBits of [1, 2, 4, 8, 16, 32, 64] as const) {
    it(`first fit after the metadata, refcount_bits=${refcountBits}`, async () => {
      const f = tmp.file('a.qcow2');
      createImage(f, '64M', { refcountBits });
      const { img, mem } = await openMem(f);
      const a = await allocClusters(img, 1);
      const b = await allocClusters(img, 3);
      expect(a).toBe(0x40000); // header, reftable, refblock, L1 occupy clusters 0..3
      expect(b).toBe(0x50000);
      expect(await getClusterRefcount(img, 4)).toBe(1);
      await mem.truncate(0x80000); // qemu-img check counts clusters up to the end of the file
      save(mem, f);
      const c = qemuCheck(f);
      expect(c.corruptions).toBe(0);
      expect(c.leaks).toBe(4);
      await freeClusters(img, b, 3 * 65536);
      await freeClusters(img, a, 65536);
      save(mem, f);
      expect(qemuCheck(f).exitCode).toBe(0);
      // freed clusters are found again (free_cluster_index moves back)
      expect(await allocClusters(img, 2)).toBe(0x40000);
    });
  }

  it('refuses overflow and underflow without a partial change', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '64M', { refcountBits: 2 });
    const { img } = await openMem(f);
    const a = await allocClusters(img, 2);
    await updateRefcount(img, a + 65536, 1, 2); // second cluster now 3 = max
    expect(await canIncrement(img, [a])).toBe(true);
    expect(await canIncrement(img, [a + 65536])).toBe(false);
    expect(await canIncrement(img, [a, a])).toBe(true);
    expect(await canIncrement(img, [a, a, a])).toBe(false);
    const err = await updateRefcount(img, a, 2 * 65536, 1).catch((e) => e);
    expect(isQcowError(err) && err.code).toBe('REFCOUNT_OVERFLOW');
    expect(await getClusterRefcount(img, a / 65536)).toBe(1); // the first cluster was not changed
    const under = await updateRefcount(img, 0x200000, 1, -1).catch((e) => e);
    expect(isQcowError(under) && under.code).toBe('REFCOUNT_OVERFLOW');
  });

  it('refcount_bits=1 cannot take a second reference', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '64M', { refcountBits: 1 });
    const { img } = await openMem(f);
    const a = await allocClusters(img, 1);
    expect(await canIncrement(img, [a])).toBe(false);
  });

  it('refuses to allocate over metadata whose refcount was zeroed', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '64M');
    const { img } = await openMem(f);
    await updateRefcount(img, 0x30000, 1, -1); // the L1 table's refcount: now looks free
    const err = await allocClusters(img, 1, 'L2 table').catch((e) => e);
    expect(isQcowError(err) && err.code).toBe('METADATA_CORRUPT');
    expect(String(err.message)).toMatch(/Preventing invalid allocation of L2 table at offset 0x30000 \(overlaps with active L1 table\)/);
  });

  for (const [clusterSize, refcountBits] of [[512, 16], [512, 64], [512, 32], [512, 8], [1024, 64], [512, 1], [4096, 2]] as const) {
    it(`allocates refcount blocks and grows the refcount table (cluster_size=${clusterSize}, refcount_bits=${refcountBits})`, async () => {
      const f = tmp.file('g.qcow2');
      createImage(f, '1G', { clusterSize, refcountBits });
      const { img, mem } = await openMem(f);
      const oldReftable = img.header.refcountTableOffset;
      const per = (clusterSize * 8) / refcountBits;
      const coverage = (clusterSize / 8) * per * img.header.refcountTableClusters;
      const offsets: number[] = [];
      const journal = new Journal('alloc');
      img.journal = journal;
      let total = 0;
      // Mixed run lengths, until well past what the first reftable covers.
      for (let i = 0; total < coverage * 1.3 && total < 45000; i++) {
        const n = 1 + (i % 7) * 13;
        offsets.push(await allocClusters(img, n), n);
        total += n;
      }
      img.journal = null;
      let end = mem.size();
      for (let i = 0; i < offsets.length; i += 2) end = Math.max(end, offsets[i]! + offsets[i + 1]! * clusterSize);
      await mem.truncate(end); // qemu-img check counts clusters up to the end of the file
      if (total > coverage) {
        expect(img.header.refcountTableOffset).not.toBe(oldReftable);
        expect(journal.entries.some((e) => e.commit && e.offset === 48)).toBe(true);
      }
      save(mem, f);
      let c = qemuCheck(f);
      expect(c.corruptions).toBe(0);
      expect(c.checkErrors).toBe(0);
      expect(c.leaks).toBe(total);
      // Reopen from the bytes: the on-disk structures agree with memory.
      const again = await Qcow2Image.open(new MemoryStore(mem.bytes().slice()), { writable: true });
      expect(again.header.refcountTableOffset).toBe(img.header.refcountTableOffset);
      for (let i = 0; i < offsets.length; i += 2) await freeClusters(img, offsets[i]!, offsets[i + 1]! * clusterSize);
      save(mem, f);
      c = qemuCheck(f);
      expect(c.exitCode).toBe(0);
    });
  }
});
