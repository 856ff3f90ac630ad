// The annotated hex's layouts (core/format/layouts.ts through core/analysis/annotate.ts) decode
// the same values as the engine's own decoders and as qemu-img reads them, on images qemu-img
// and qemu-io make: every cluster size, refcount widths 1 to 64, extended L2 with subcluster
// writes, compressed clusters (qemu-img convert -c), snapshots and persistent bitmaps.
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { annotateCluster, fieldAt, readField, type AnnotatedRegion, type AnnotateSource } from '../../core/analysis/annotate.ts';
import { bitValue, fieldValue, type FieldLayout } from '../../core/format/layouts.ts';
import { decodeL1Entry, decodeL2Entry } from '../../core/format/entries.ts';
import { readHeaderFields } from '../../core/format/header.ts';
import { getRefcount, reftableEntry } from '../../core/format/refcount.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { NodeFileStore } from '../../cli/node-file-store.ts';
import { createImage, makeTempDir, qemuImgOk, qemuInfo, qemuIoOk, qemuMap, removeDir, type CreateOptions } from '../helpers/qemu.ts';

const dir = makeTempDir('qcowscope-annotate-');
afterAll(() => removeDir(dir));

/** Every field and bit range of item `index` of a region, by the spec's name, decoded from the cluster's bytes. */
function itemValues(region: AnnotatedRegion, cluster: Uint8Array, clusterStart: number, index: number): Map<string, bigint | string | Uint8Array> {
  const out = new Map<string, bigint | string | Uint8Array>();
  const fields: FieldLayout[] = region.variants[region.variantOf?.[index] ?? 0]!;
  for (const f of fields) {
    const v = fieldValue(cluster, region.at - clusterStart + index * region.stride + f.offset, f);
    out.set(f.name, v);
    for (const b of f.bits ?? []) if (typeof v === 'bigint') out.set(b.name, bitValue(v, b));
  }
  return out;
}

/** Items past the first 64 whose bytes are all zero are skipped (2 MiB tables hold a million). */
function skip(region: AnnotatedRegion, cluster: Uint8Array, clusterStart: number, index: number): boolean {
  const at = region.at - clusterStart + index * region.stride;
  return index >= 64 && cluster.subarray(at, at + region.stride).every((x) => x === 0);
}

const camel = (s: string) => s.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** Check every structure of the image at `f`; the number of compressed L2 entries. */
async function check(f: string): Promise<number> {
  const info = qemuInfo(f);
  const img = await Qcow2Image.open(NodeFileStore.open(f));
  try {
    const cs = img.clusterSize;
    const src: AnnotateSource = { read: (at, n) => img.store.read(at, n), clusterSize: cs, header: img.header, image: img };
    const regionsIn = async (c: number) => ({ regions: await annotateCluster(src, c), bytes: await img.store.read(c, cs) });
    const h = img.header;

    // header: every fixed field as readHeaderFields reads it, and as qemu-img info reports it
    const c0 = await regionsIn(0);
    expect(c0.regions.map((r) => r.structure).filter((s) => !['header', 'header extension', 'backing file name'].includes(s))).toEqual([]);
    const hdr = itemValues(c0.regions.find((r) => r.structure === 'header')!, c0.bytes, 0, 0);
    const fields = readHeaderFields(c0.bytes) as unknown as Record<string, number | bigint>;
    for (const [name, v] of hdr) if (camel(name) in fields) expect(v, name).toBe(BigInt(fields[camel(name)]!));
    expect(2n ** (hdr.get('cluster_bits') as bigint)).toBe(BigInt(info['cluster-size']!));
    expect(hdr.get('size')).toBe(BigInt(info['virtual-size']));
    if (h.version >= 3) {
      expect(hdr.get('extended L2 entries') === 1n).toBe(info['format-specific']!.data['extended-l2'] ?? false);
      expect(hdr.get('lazy refcounts') === 1n).toBe(info['format-specific']!.data['lazy-refcounts']);
      expect(2n ** (hdr.get('refcount_order') as bigint)).toBe(BigInt(info['format-specific']!.data['refcount-bits']));
    }
    const featureTable = c0.regions.find((r) => r.title.endsWith('feature name table'));
    if (h.featureNames.length) {
      const names = featureTable!.variants[0]!.filter((x) => x.name === 'feature name').map((x) => fieldValue(c0.bytes, featureTable!.at + x.offset, x));
      expect(names).toEqual(h.featureNames.map((n) => n.name));
    }
    if (h.bitmaps) {
      const ext = c0.regions.find((r) => r.title.endsWith('bitmaps extension'))!;
      const v = itemValues(ext, c0.bytes, 0, 0);
      expect([v.get('nb_bitmaps'), v.get('bitmap_directory_size'), v.get('bitmap_directory_offset')])
        .toEqual([h.bitmaps.nbBitmaps, h.bitmaps.bitmapDirectorySize, h.bitmaps.bitmapDirectoryOffset].map(BigInt));
    }

    // L1: every entry as decodeL1Entry reads it
    const l1Cluster = Math.floor(h.l1TableOffset / cs) * cs;
    const l1c = await regionsIn(l1Cluster);
    const l1r = l1c.regions.find((r) => r.title === 'Active L1 table')!;
    for (let i = 0; i < l1r.count; i++) {
      const v = itemValues(l1r, l1c.bytes, l1Cluster, i);
      const e = decodeL1Entry(img.l1Table, l1r.firstIndex + i);
      expect([v.get('L2 table offset')! as bigint * 512n, v.get('COPIED')]).toEqual([BigInt(e.l2Offset), e.copied ? 1n : 0n]);
    }

    // L2: every entry of every active L2 table as decodeL2Entry reads it; guest offsets followed
    // through the layouts land where qemu-img map says
    const l2At = new Map<number, { region: AnnotatedRegion; bytes: Uint8Array }>();
    let compressed = 0;
    for (let i = 0; i < h.l1Size; i++) {
      const off = decodeL1Entry(img.l1Table, i).l2Offset;
      if (!off) continue;
      const c = await regionsIn(off);
      const region = c.regions.find((r) => r.structure === 'L2 table')!;
      l2At.set(i, { region, bytes: c.bytes });
      for (let k = 0; k < region.count; k++) {
        if (skip(region, c.bytes, off, k)) continue;
        const v = itemValues(region, c.bytes, off, k);
        const e = decodeL2Entry(c.bytes, k, img.geometry);
        if (e.compressed) {
          compressed++;
          expect(region.variantOf![k]).toBe(1);
          expect([v.get('host offset'), (v.get('additional sectors') as bigint) + 1n]).toEqual([BigInt(e.compressed.hostOffset), BigInt(e.compressed.nbSectors)]);
        } else {
          if (e.hostOffset) expect((v.get('host cluster offset') as bigint) * 512n).toBe(BigInt(e.hostOffset));
          expect([v.get('COPIED'), v.get('all zeros')]).toEqual([e.copied ? 1n : 0n, e.zeroFlag ? 1n : 0n]);
        }
        if (img.geometry.extendedL2 && !e.compressed) {
          expect([v.get('subcluster allocation bitmap'), v.get('subcluster zero bitmap')]).toEqual([BigInt(e.allocBitmap!), BigInt(e.zeroBitmap!)]);
        }
      }
    }
    const span = cs * img.l2Entries;
    for (const m of qemuMap(f)) {
      if (!m.data || m.offset === undefined || m.depth > 0) continue; // depth 1: the backing file's
      for (let g = m.start; g < m.start + m.length; g += Math.min(cs, m.length)) {
        const t = l2At.get(Math.floor(g / span))!;
        const v = itemValues(t.region, t.bytes, t.region.at, Math.floor((g % span) / cs));
        expect(Number(v.get('host cluster offset')) * 512 + (g % cs), `guest 0x${g.toString(16)}`).toBe(m.offset + g - m.start);
      }
    }

    // refcount table and every refcount block as reftableEntry and getRefcount read them
    const rtc = await regionsIn(h.refcountTableOffset);
    const rt = rtc.regions.find((r) => r.structure === 'refcount table')!;
    let blocks = 0;
    for (let i = 0; i < rt.count; i++) {
      if (skip(rt, rtc.bytes, h.refcountTableOffset, i)) continue;
      const off = reftableEntry(img.reftable, i);
      expect((itemValues(rt, rtc.bytes, h.refcountTableOffset, i).get('refcount block offset') as bigint) * 512n).toBe(BigInt(off));
      if (!off) continue;
      blocks++;
      const rb = await regionsIn(off);
      const r = rb.regions.find((x) => x.structure === 'refcount block')!;
      for (let k = 0; k < r.count; k++) {
        if (skip(r, rb.bytes, off, k)) continue;
        const v = itemValues(r, rb.bytes, off, k);
        for (let j = 0; j < (r.perItem ?? 1); j++) {
          const name = r.perItem! > 1 ? `refcount +${j}` : 'refcount';
          expect(v.get(name)).toBe(BigInt(getRefcount(rb.bytes, k * r.perItem! + j, img.refcountOrder)));
        }
      }
    }
    expect(blocks).toBeGreaterThan(0);

    // snapshot table entries as parseSnapshotTable and qemu-img info read them
    for (const [i, sn] of img.snapshots.entries()) {
      const c = Math.floor(sn.entryOffset / cs) * cs;
      const regions = await annotateCluster(src, c);
      const r = regions.find((x) => x.structure === 'snapshot table' && x.at === sn.entryOffset)!;
      const v = itemValues(r, await img.store.read(sn.entryOffset, r.stride), sn.entryOffset, 0);
      const q = info.snapshots![i]!;
      expect([v.get('l1_table_offset'), v.get('l1_size'), v.get('date_sec'), v.get('date_nsec'), v.get('vm_state_size_large'), v.get('disk_size')])
        .toEqual([sn.l1TableOffset, sn.l1Size, q['date-sec'], q['date-nsec'], q['vm-state-size'], sn.diskSize].map(BigInt));
      expect(v.get('vm_clock_nsec')).toBe(BigInt(q['vm-clock-sec']) * 1000000000n + BigInt(q['vm-clock-nsec']));
      expect([v.get('unique ID string'), v.get('name')]).toEqual([q.id, q.name]);
    }

    // bitmap directory entries as parseBitmapDirectory and qemu-img info read them
    const qb = (info['format-specific']!.data['bitmaps'] ?? []) as Array<{ name: string; granularity: number; flags: string[] }>;
    expect(img.bitmaps.length).toBe(qb.length);
    for (const [i, e] of img.bitmaps.entries()) {
      const at = h.bitmaps!.bitmapDirectoryOffset + e.entryOffset;
      const r = (await annotateCluster(src, Math.floor(at / cs) * cs)).find((x) => x.structure === 'bitmap directory' && x.at === at)!;
      const v = itemValues(r, await img.store.read(at, r.stride), at, 0);
      expect([v.get('bitmap_table_offset'), v.get('bitmap_table_size'), v.get('flags'), v.get('granularity_bits')])
        .toEqual([e.bitmapTableOffset, e.bitmapTableSize, e.flags, e.granularityBits].map(BigInt));
      expect(v.get('name')).toBe(qb[i]!.name);
      expect(2 ** Number(v.get('granularity_bits'))).toBe(qb[i]!.granularity);
      expect([v.get('in_use') === 1n ? ['in-use'] : [], v.get('auto') === 1n ? ['auto'] : []].flat()).toEqual(qb[i]!.flags);
    }

    // the inspector's reading of a byte names the same field the view's lookup finds
    const hit = fieldAt(c0.regions, 20)!;
    const reading = (await readField(src, 0, 22))!;
    expect([reading.name, reading.at, hit.field.name]).toEqual(['cluster_bits', 20, 'cluster_bits']);
    expect(reading.words).toContain(`clusters of ${info['cluster-size']!.toLocaleString('en-US')} bytes`);
    return compressed;
  } finally {
    await img.close();
  }
}

function make(name: string, size: string, opts: CreateOptions, ...io: string[]): string {
  const f = path.join(dir, name);
  createImage(f, size, opts);
  if (io.length) qemuIoOk(f, ...io);
  return f;
}

describe('annotated layouts decode what the engine and qemu-img read', () => {
  for (const clusterSize of [512, 4096, 65536, 2 * 1024 * 1024]) {
    it(`cluster_size=${clusterSize}, with data and two snapshots`, async () => {
      const f = make(`c${clusterSize}.qcow2`, '64M', { clusterSize }, 'write -P 0x11 0 300k', 'write -z 1M 64k', 'write -P 0x12 40M 8k');
      qemuImgOk(['snapshot', '-c', 'first', f]);
      qemuIoOk(f, 'write -P 0x13 4k 4k');
      qemuImgOk(['snapshot', '-c', 'second snapshot', f]);
      await check(f);
    });
  }

  for (const refcountBits of [1, 2, 4, 8, 32, 64] as const) {
    it(`refcount_bits=${refcountBits}`, async () => {
      await check(make(`r${refcountBits}.qcow2`, '16M', { refcountBits, clusterSize: 4096 }, 'write -P 0x21 0 64k'));
    });
  }

  it('extended L2 with subcluster writes and zeroes', async () => {
    await check(make('extl2.qcow2', '32M', { extendedL2: true, clusterSize: 65536 }, 'write -P 0x31 0 2k', 'write -P 0x32 70k 6k', 'write -z 200k 8k', 'write -P 0x33 1M 64k'));
  });

  it('compressed clusters (qemu-img convert -c), zlib and zstd', async () => {
    for (const compressionType of ['zlib', 'zstd'] as const) {
      const src = make(`plain-${compressionType}.qcow2`, '16M', {}, 'write -P 0x41 0 256k', 'write -P 0x42 5M 64k');
      const out = path.join(dir, `compressed-${compressionType}.qcow2`);
      qemuImgOk(['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${compressionType}`, src, out]);
      expect(await check(out)).toBeGreaterThan(4);
    }
  });

  it('persistent bitmaps (qemu-img bitmap --add)', async () => {
    const f = make('bitmaps.qcow2', '16M', {}, 'write -P 0x51 0 64k');
    qemuImgOk(['bitmap', '--add', f, 'b0']);
    qemuImgOk(['bitmap', '--add', '-g', '16K', '--disable', f, 'second-bitmap']);
    await check(f);
  });

  it('a compat=0.10 image with a backing file and its format extension', async () => {
    const base = make('base.qcow2', '16M', {}, 'write -P 0x61 0 64k');
    await check(make('overlay.qcow2', '16M', { compat: '0.10', backing: base }, 'write -P 0x62 64k 64k'));
    await check(make('overlay3.qcow2', '16M', { backing: base }, 'write -P 0x63 128k 64k'));
  });
});
