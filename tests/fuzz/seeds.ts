// Seed images for the fuzzer, made at test time by qemu-img and qemu-io (never committed): each
// one exercises a different part of the format — snapshots, compressed clusters (zlib and zstd),
// extended L2, a backing file, persistent bitmaps, a dirty lazy-refcounts image, v2, many
// snapshots, every cluster size 512 B..2 MiB and every refcount width 1..64 bits. Built once into a cache directory keyed by
// the qemu-img version and this file's recipe version, so repeated runs skip the qemu calls.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createImage, qemuImg, qemuImgOk, qemuIo, qemuIoOk } from '../helpers/qemu.ts';

/** Bump when a recipe below changes (regression recipes hold offsets into these images). */
const RECIPE_VERSION = 2;

export interface Seed {
  name: string;
  weight: number;
  image: Uint8Array;
  /** The backing image (opened unmutated as the chain below `image`), named `backingName`. */
  backing?: Uint8Array;
  backingName?: string;
}

interface SeedRecipe {
  name: string;
  /** How often cases start from this seed, relative to the default 4 (heavy seeds less often). */
  weight?: number;
  build(file: string, dir: string): void;
  backing?: string;
}

const io = (file: string, ...cmds: string[]): void => {
  qemuIoOk(file, ...cmds);
};

// A catalogue: its entries share one shape on purpose (each is a different image recipe and its
// expected result), so the duplicate-code scan's same-shape pairs inside it are deliberate.
export const SEED_RECIPES: SeedRecipe[] = [
  {
    // the default layout (64 KiB clusters, refcount 16) with two snapshots, COW, zlib-compressed,
    // zero and discarded clusters
    name: 'v3-64k-snaps',
    build(f) {
      createImage(f, '16M');
      io(f, 'write -P 0x11 0 128k', 'write -P 0x22 1M 64k', 'write -c -P 0x33 2M 64k', 'write -z 3M 64k');
      qemuImgOk(['snapshot', '-c', 's1', f]);
      io(f, 'write -P 0x44 0 64k', 'discard 1M 64k');
      qemuImgOk(['snapshot', '-c', 'second snapshot', f]);
      io(f, 'write -P 0x55 4M 64k', 'write -c -P 0x56 5M 64k');
    },
  },
  {
    name: 'v3-zstd-4k',
    build(f) {
      createImage(f, '8M', { clusterSize: 4096, compressionType: 'zstd' });
      io(f, 'write -c -P 0x66 0 64k', 'write -P 0x67 64k 8k', 'write -c -P 0x68 1M 4k');
      qemuImgOk(['snapshot', '-c', 'z1', f]);
      io(f, 'write -c -P 0x69 2M 8k');
    },
  },
  {
    name: 'v3-extl2-64k',
    build(f) {
      createImage(f, '16M', { extendedL2: true });
      io(f, 'write -P 0x11 0 4k', 'write -P 0x22 100k 6k', 'write -z 200k 8k', 'write -c -P 0x23 1M 64k');
      qemuImgOk(['snapshot', '-c', 'x1', f]);
      io(f, 'write -P 0x33 2k 2k', 'write -z 1M 2k');
    },
  },
  {
    name: 'v3-extl2-16k-zstd',
    build(f) {
      createImage(f, '4M', { clusterSize: 16384, extendedL2: true, compressionType: 'zstd' });
      io(f, 'write -P 0x12 0 1k', 'write -c -P 0x13 64k 16k', 'write -z 128k 4k');
    },
  },
  {
    name: 'v2-4k',
    build(f) {
      createImage(f, '8M', { compat: '0.10', clusterSize: 4096 });
      io(f, 'write -P 0x31 0 16k', 'write -c -P 0x32 1M 4k');
      qemuImgOk(['snapshot', '-c', 'old', f]);
      io(f, 'write -P 0x34 4k 4k');
      qemuImgOk(['snapshot', '-c', 'older', f]);
    },
  },
  {
    name: 'v3-512-rc2',
    build(f) {
      createImage(f, '2M', { clusterSize: 512, refcountBits: 2 });
      io(f, 'write -P 0x41 0 4k', 'write -P 0x42 1M 1k');
      qemuImgOk(['snapshot', '-c', 'tiny', f]);
      io(f, 'write -P 0x43 512 512');
    },
  },
  {
    name: 'v3-2m-rc64',
    weight: 1, // 2 MiB clusters make every operation ~10× slower than the others
    build(f) {
      createImage(f, '8M', { clusterSize: 2 * 1024 * 1024, refcountBits: 64 });
      io(f, 'write -P 0x51 0 64k', 'write -c -P 0x52 2M 2M');
      qemuImgOk(['snapshot', '-c', 'big', f]);
    },
  },
  {
    name: 'v3-rc1-8k',
    build(f) {
      createImage(f, '4M', { clusterSize: 8192, refcountBits: 1 });
      io(f, 'write -P 0x61 0 24k', 'write -c -P 0x62 64k 8k');
    },
  },
  {
    name: 'v3-rc4-snaps',
    build(f) {
      createImage(f, '4M', { clusterSize: 32768, refcountBits: 4 });
      io(f, 'write -P 0x71 0 64k');
      qemuImgOk(['snapshot', '-c', 'a', f]);
      io(f, 'write -P 0x72 32k 32k');
      qemuImgOk(['snapshot', '-c', 'n'.repeat(255), f]);
      io(f, 'write -P 0x73 1M 32k');
      qemuImgOk(['snapshot', '-c', 'a', f]); // duplicate name: legal on disk
      qemuImgOk(['snapshot', '-d', 'a', f]); // deletes the first 'a': IDs 2 and 3 remain
    },
  },
  {
    // many snapshots (a snapshot table over several clusters), refcount width 32
    name: 'v3-128k-rc32-many-snaps',
    weight: 2,
    build(f) {
      createImage(f, '8M', { clusterSize: 131072, refcountBits: 32 });
      io(f, 'write -P 0x81 0 256k');
      for (let i = 0; i < 40; i++) {
        qemuImgOk(['snapshot', '-c', `m${i}`, f]);
        if (i % 8 === 0) io(f, `write -P 0x${(0x82 + i).toString(16)} ${(i % 4) * 128}k 64k`);
      }
    },
  },
  {
    name: 'v3-256k-rc16-extl2',
    weight: 2,
    build(f) {
      createImage(f, '16M', { clusterSize: 262144, extendedL2: true });
      io(f, 'write -P 0x91 0 40k', 'write -c -P 0x92 1M 256k');
      qemuImgOk(['snapshot', '-c', 'q', f]);
      io(f, 'write -P 0x93 8k 8k');
    },
  },
  {
    name: 'v3-1m-rc32',
    weight: 1,
    build(f) {
      createImage(f, '8M', { clusterSize: 1048576, refcountBits: 32 });
      io(f, 'write -P 0x94 0 4k', 'write -c -P 0x95 3M 1M');
      qemuImgOk(['snapshot', '-c', 'm', f]);
      io(f, 'write -P 0x96 4k 4k');
    },
  },
  {
    name: 'v3-backing-32k-rc8',
    backing: 'base.qcow2',
    build(f, dir) {
      const base = path.join(dir, 'base.qcow2');
      createImage(base, '8M');
      io(base, 'write -P 0x77 0 1M', 'write -c -P 0x78 2M 64k');
      createImage(f, '8M', { clusterSize: 32768, refcountBits: 8, backing: 'base.qcow2' });
      io(f, 'write -P 0x88 512k 32k', 'write -z 64k 32k');
      qemuImgOk(['snapshot', '-c', 'ov', f]);
      io(f, 'write -P 0x89 0 32k');
    },
  },
  {
    name: 'v3-bitmaps',
    build(f) {
      createImage(f, '8M');
      io(f, 'write -P 0x91 0 64k');
      qemuImgOk(['bitmap', '--add', f, 'b0']);
      qemuImgOk(['bitmap', '--add', '-g', '65536', f, 'b1']);
      io(f, 'write -P 0x92 1M 128k');
    },
  },
  {
    name: 'v3-lazy-dirty',
    build(f) {
      createImage(f, '4M', { lazyRefcounts: true });
      io(f, 'write -P 0xa1 0 64k');
      const r = qemuIo(['-f', 'qcow2', '-c', 'write -P 0xa2 1M 64k', '-c', 'sigraise 9', f]);
      if (r.signal !== 'SIGKILL') throw new Error(`v3-lazy-dirty: qemu-io did not die: ${r.status} ${r.stderr}`);
    },
  },
];

function cacheDir(): string {
  const v = qemuImg(['--version']).stdout.split('\n')[0]!.replace(/[^0-9.]+/g, '_');
  return path.join(os.tmpdir(), `qcowscope-fuzz-seeds-v${RECIPE_VERSION}-${v}`);
}

/** Build (or load from the cache) every seed image. */
export function buildSeeds(): Seed[] {
  const dir = cacheDir();
  const done = path.join(dir, 'DONE');
  if (!fs.existsSync(done)) {
    const tmp = fs.mkdtempSync(dir + '-tmp-');
    for (const r of SEED_RECIPES) {
      const sub = path.join(tmp, r.name);
      fs.mkdirSync(sub);
      r.build(path.join(sub, 'image.qcow2'), sub);
    }
    fs.writeFileSync(path.join(tmp, 'DONE'), new Date().toISOString());
    try {
      fs.renameSync(tmp, dir);
    } catch {
      // another process built it first: use theirs
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }
  return SEED_RECIPES.map((r) => {
    const sub = path.join(dir, r.name);
    const s: Seed = { name: r.name, weight: r.weight ?? 4, image: new Uint8Array(fs.readFileSync(path.join(sub, 'image.qcow2'))) };
    if (r.backing) {
      s.backing = new Uint8Array(fs.readFileSync(path.join(sub, r.backing)));
      s.backingName = r.backing;
    }
    return s;
  });
}
