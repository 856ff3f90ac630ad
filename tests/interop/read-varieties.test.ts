// Reading every variety of image QEMU makes, judged by qemu-img on the same file (issue 2, "How
// it is judged"): compat 0.10 and 1.1 at every cluster size, refcount widths 1..64, lazy
// refcounts (clean and dirty), extended L2 with subcluster writes, zlib and zstd compression,
// zeroed and discarded ranges, metadata preallocation, and data above 4 GiB.
import * as fs from 'node:fs';
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { createImage, qemuImgOk, qemuIo, qemuIoOk, type CreateOptions } from '../helpers/qemu.ts';
import { compareVarieties, type Variety } from './read-compare.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** A file of incompressible bytes for `write -s` (qemu-io fills the write buffer from it). */
function randomFile(dir: string, size: number): string {
  const f = path.join(dir, `random-${size}.bin`);
  if (!fs.existsSync(f)) fs.writeFileSync(f, crypto.randomBytes(size));
  return f;
}

function create(dir: string, name: string, size: number | string, opts: CreateOptions = {}): string {
  const f = path.join(dir, name);
  createImage(f, size, opts);
  return f;
}

// A catalogue: its entries share one shape on purpose (each is a different image recipe and its
// expected result), so the duplicate-code scan's same-shape pairs inside it are deliberate.
const varieties: Variety[] = [];

// ---- compat × cluster size, with data on both sides of 4 GiB ---------------------------------
for (const clusterSize of [512, 1 * KiB, 4 * KiB, 64 * KiB, 2 * MiB]) {
  for (const compat of ['0.10', '1.1'] as const) {
    varieties.push({
      name: `compat=${compat} cluster_size=${clusterSize}, 5 GiB with data above 4 GiB and a snapshot`,
      make(dir) {
        const f = create(dir, 'img.qcow2', 5 * GiB, { compat, clusterSize });
        qemuIoOk(f,
          'write -P 0x22 0 3M', // whole clusters, then a partly written last one at small sizes
          'write -P 0x33 4G 1M', // the 32-bit trap: guest offsets ≥ 2^32
          'write -P 0x44 4299000000 12345', // unaligned start and length
          'write -P 0x45 4294934528 65536'); // straddles the 4 GiB boundary
        if (compat === '1.1') qemuIoOk(f, 'write -z 1M 512k', 'discard 2M 64k');
        qemuImgOk(['snapshot', '-c', 's1', f]);
        qemuIoOk(f, 'write -P 0x55 100k 1M', 'write -P 0x56 4G 4k');
        return 'img.qcow2';
      },
    });
  }
}

// ---- refcount widths ---------------------------------------------------------------------------
for (const refcountBits of [1, 2, 4, 8, 16, 32, 64] as const) {
  varieties.push({
    name: `refcount_bits=${refcountBits}`,
    make(dir) {
      const f = create(dir, 'img.qcow2', 64 * MiB, { refcountBits });
      qemuIoOk(f, 'write -P 0x22 0 3M', 'write -z 4M 128k', 'discard 1M 64k');
      // refcount_bits=1 cannot hold a shared cluster: no snapshot there (QEMU refuses one)
      if (refcountBits > 1) {
        qemuImgOk(['snapshot', '-c', 'a', f]);
        qemuIoOk(f, 'write -P 0x23 512k 64k');
      }
      if (refcountBits > 2) {
        qemuImgOk(['snapshot', '-c', 'b', f]);
        qemuIoOk(f, 'write -P 0x24 0 64k');
      }
      return 'img.qcow2';
    },
  });
}

// ---- lazy refcounts, clean and dirty -------------------------------------------------------------
varieties.push({
  name: 'lazy_refcounts=on, cleanly closed',
  make(dir) {
    const f = create(dir, 'img.qcow2', 64 * MiB, { lazyRefcounts: true });
    qemuIoOk(f, 'write -P 0x22 0 3M', 'write -z 8M 64k');
    return 'img.qcow2';
  },
});
varieties.push({
  name: 'lazy_refcounts=on, dirty (qemu-io killed after writing), with a snapshot',
  make(dir) {
    const f = create(dir, 'img.qcow2', 64 * MiB, { lazyRefcounts: true });
    qemuIoOk(f, 'write -P 0x21 0 1M');
    qemuImgOk(['snapshot', '-c', 'before', f]);
    const r = qemuIo(['-f', 'qcow2', '-c', 'write -P 0x22 512k 1M', '-c', 'write -P 0x23 10M 64k', '-c', 'sigraise 9', f]);
    if (r.signal !== 'SIGKILL') throw new Error(`qemu-io was expected to die by SIGKILL: ${r.status} ${r.stderr}`);
    return 'img.qcow2';
  },
});

// ---- extended L2 -----------------------------------------------------------------------------------
for (const clusterSize of [16 * KiB, 64 * KiB, 2 * MiB]) {
  varieties.push({
    name: `extended_l2=on cluster_size=${clusterSize}: subcluster writes, zeroes and discards`,
    make(dir) {
      const f = create(dir, 'img.qcow2', 64 * MiB, { extendedL2: true, clusterSize });
      qemuIoOk(f,
        'write -P 0x22 0 4k', // one subcluster (or part of one) of the first cluster
        'write -P 0x23 70k 6k', // inside a later cluster, unaligned to subclusters
        'write -z 200k 8k', // zero subclusters in an unallocated cluster
        'write -P 0x24 1M 256k',
        'write -z 1088k 4k', // zero subclusters inside allocated data
        'discard 1100k 4k',
        'write -z 5M 128k');
      qemuImgOk(['snapshot', '-c', 'sub', f]);
      qemuIoOk(f, 'write -P 0x25 2k 2k', 'write -z -u 1M 64k');
      return 'img.qcow2';
    },
  });
}

// ---- compressed images ----------------------------------------------------------------------------
function compressibleSource(dir: string): string {
  const src = path.join(dir, 'src.qcow2');
  createImage(src, 64 * MiB);
  qemuIoOk(src,
    'write -P 0x22 0 3M',
    'write -P 0x00 4M 1M', // all zeros: convert leaves it out
    'write -P 0x31 10M 100k',
    'write -z 20M 1M');
  qemuIoOk(src, `write -s ${randomFile(dir, 2 * MiB)} 30M 2M`); // incompressible: stored as normal clusters
  return src;
}
for (const compressionType of ['zlib', 'zstd'] as const) {
  for (const clusterSize of [512, 4 * KiB, 64 * KiB, 2 * MiB]) {
    varieties.push({
      name: `compressed (qemu-img convert -c) compression_type=${compressionType} cluster_size=${clusterSize}`,
      make(dir) {
        const src = compressibleSource(dir);
        qemuImgOk(['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${compressionType},cluster_size=${clusterSize}`, src, path.join(dir, 'img.qcow2')]);
        return 'img.qcow2';
      },
    });
  }
}
varieties.push({
  name: 'compressed with extended L2 (zstd), then a subcluster overwritten',
  make(dir) {
    const src = compressibleSource(dir);
    const f = path.join(dir, 'img.qcow2');
    qemuImgOk(['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd,extended_l2=on', src, f]);
    qemuIoOk(f, 'write -P 0x44 4k 4k', 'write -z 10M 2k');
    return 'img.qcow2';
  },
});
varieties.push({
  name: 'compressed clusters written by qemu-io (write -c) around snapshots, then overwritten and zeroed',
  make(dir) {
    const f = create(dir, 'img.qcow2', 64 * MiB, { compressionType: 'zstd' });
    qemuIoOk(f, 'write -P 0x11 0 1M');
    qemuImgOk(['snapshot', '-c', 'a', f]);
    qemuIoOk(f, 'write -c -P 0x66 4M 64k', 'write -c -P 0x68 6M 128k', 'write -c -P 0x69 8M 64k');
    qemuImgOk(['snapshot', '-c', 'b', f]);
    qemuIoOk(f, 'write -z 6M 64k', 'discard 4M 64k', 'write -P 0x70 8M 4k');
    return 'img.qcow2';
  },
});

// ---- zeroed and discarded ranges -------------------------------------------------------------------
for (const compat of ['0.10', '1.1'] as const) {
  varieties.push({
    name: `compat=${compat}: zeroed (write -z, with and without unmap) and discarded ranges`,
    make(dir) {
      const f = create(dir, 'img.qcow2', 64 * MiB, { compat });
      qemuIoOk(f,
        'write -P 0x11 0 4M',
        'write -z 128k 128k', // allocated → zero (keeps its cluster on v3: zero-alloc)
        'write -z -u 512k 128k', // unmapped zero (zero-plain on v3)
        'discard 1M 128k',
        'write -z 8M 64k', // never allocated
        'write -z 100k 8k', // part of a cluster: written as data
        'discard 2M 10k'); // part of a cluster: ignored
      qemuImgOk(['snapshot', '-c', 'z', f]);
      qemuIoOk(f, 'write -z 0 64k', 'discard 3M 64k');
      return 'img.qcow2';
    },
  });
}

// ---- metadata preallocation ---------------------------------------------------------------------------
for (const [label, opts, size] of [
  ['compat=0.10', { compat: '0.10' }, 64 * MiB],
  ['compat=1.1', { compat: '1.1' }, 64 * MiB],
  ['extended_l2=on', { extendedL2: true }, 64 * MiB],
  ['cluster_size=2M, 5 GiB', { clusterSize: 2 * MiB }, 5 * GiB],
] as const) {
  varieties.push({
    name: `preallocation=metadata ${label}: holes in the file read as zero data`,
    make(dir) {
      const f = create(dir, 'img.qcow2', size, { ...opts, preallocation: 'metadata' } as CreateOptions);
      qemuIoOk(f, 'write -P 0x22 0 100k', 'write -P 0x23 10M 4k', 'write -P 0x24 40M 64k');
      if (size > 4 * GiB) qemuIoOk(f, 'write -P 0x25 4G 4k');
      if (opts.compat !== '0.10') qemuIoOk(f, 'write -z 20M 64k');
      return 'img.qcow2';
    },
  });
}

// ---- persistent bitmaps (format-specific "bitmaps" in qemu-img info) ----------------------------------
varieties.push({
  name: 'persistent bitmaps: auto, disabled, 1 MiB granularity',
  make(dir) {
    const f = create(dir, 'img.qcow2', 64 * MiB);
    qemuImgOk(['bitmap', '--add', f, 'b0']);
    qemuImgOk(['bitmap', '--add', '-g', '1M', f, 'second bitmap']);
    qemuImgOk(['bitmap', '--add', '--disable', f, 'b2']);
    qemuIoOk(f, 'write -P 0x22 0 3M');
    return 'img.qcow2';
  },
});

// ---- header oddities QEMU reads without complaint ---------------------------------------------------------
function pokeBytes(file: string, offset: number, bytes: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}
function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
}
varieties.push({
  name: 'corrupt bit set (read-only reads are allowed)',
  make(dir) {
    const f = create(dir, 'img.qcow2', 64 * MiB);
    qemuIoOk(f, 'write -P 0x22 0 1M');
    pokeBytes(f, 72, u64(2n));
    return 'img.qcow2';
  },
});
varieties.push({
  name: 'dirty bit set without lazy refcounts',
  make(dir) {
    const f = create(dir, 'img.qcow2', 64 * MiB);
    qemuIoOk(f, 'write -P 0x22 0 1M');
    pokeBytes(f, 72, u64(1n));
    return 'img.qcow2';
  },
});
varieties.push({
  name: 'unknown compatible and autoclear bits, unknown header fields and extension (4 KiB clusters, no feature table)',
  make(dir) {
    const f = create(dir, 'img.qcow2', 64 * MiB, { clusterSize: 4096 });
    qemuIoOk(f, 'write -P 0x22 0 1M');
    pokeBytes(f, 80, u64(1n << 40n)); // compatible
    pokeBytes(f, 88, u64(1n << 50n)); // autoclear
    // header_length 120: 8 unknown header bytes, then an unknown extension and the end marker
    const hdr = Buffer.alloc(8 + 8 + 16 + 8);
    hdr.write('unknown!', 0, 'latin1');
    hdr.writeUInt32BE(0x12345678, 8);
    hdr.writeUInt32BE(13, 12);
    hdr.write('some payload.', 16, 'latin1');
    pokeBytes(f, 112, hdr);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(120);
    pokeBytes(f, 100, len);
    return 'img.qcow2';
  },
});

// ---- external data files ----------------------------------------------------------------------------
for (const raw of [false, true]) {
  varieties.push({
    name: `external data file${raw ? ', data_file_raw=on' : ''}`,
    make(dir) {
      const f = create(dir, 'img.qcow2', 64 * MiB, { extra: [`data_file=${path.join(dir, 'img.data')}${raw ? ',data_file_raw=on' : ''}`] });
      qemuIoOk(f, 'write -P 0x22 0 100k', 'write -P 0x23 10M 64k');
      if (!raw) qemuIoOk(f, 'write -z 10M 32k', 'discard 0 64k');
      return 'img.qcow2';
    },
  });
}

// ---- odd sizes -----------------------------------------------------------------------------------------
varieties.push({ name: 'virtual size 0', make: (dir) => (create(dir, 'img.qcow2', 0), 'img.qcow2') });
varieties.push({
  name: 'virtual size not a multiple of 512 (header poked to 1000001 bytes)',
  make(dir) {
    const f = create(dir, 'img.qcow2', 1000001);
    qemuIoOk(f, 'write -P 0x07 999000 1000');
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(1000001n);
    const fd = fs.openSync(f, 'r+');
    fs.writeSync(fd, b, 0, 8, 24);
    fs.closeSync(fd);
    return 'img.qcow2';
  },
});

// ---- large virtual sizes ---------------------------------------------------------------------------------
varieties.push({
  name: '6 GiB, 512-byte clusters (L2 tables far above 4 GiB of guest space), absolute path',
  make(dir) {
    const f = create(dir, 'img.qcow2', 6 * GiB, { clusterSize: 512 });
    qemuIoOk(f, 'write -P 0x61 4294966784 1024', 'write -P 0x62 5G 3k', 'write -P 0x63 0 512');
    return f;
  },
});
varieties.push({
  name: '2 TiB virtual size with data at 1 TiB + 7',
  make(dir) {
    const f = create(dir, 'img.qcow2', '2T');
    qemuIoOk(f, 'write -P 0x71 1099511627783 4096', 'write -P 0x72 2199023190016 65536');
    return 'img.qcow2';
  },
});

compareVarieties(varieties);
