// The gallery of example images: each one the qemu-img / qemu-io lines that make it (shown to the
// student, run by the tests with QEMU's tools and, through core/gallery/run-recipe.ts, by the
// engine in the page), what it shows in plain words, where to look first, and the verdict
// `qemu-img check` gives on it.
import { runRecipe, type RecipeFile } from './run-recipe.ts';

export interface GalleryRecipe {
  /** Short name used in links: #img=gallery:<id>. */
  id: string;
  title: string;
  /** What the image shows, in plain words. */
  about: string;
  /** The lines that make it, in order; the last file they make is the one shown. */
  commands: readonly string[];
  /** The view to open first (an address's parameters, web/lib/address.ts). */
  look: string;
  /** What `qemu-img check` finds on it. */
  verdict: { corruptions: number; leaks: number };
}

const CLEAN = { corruptions: 0, leaks: 0 };

export const GALLERY: readonly GalleryRecipe[] = [
  {
    id: 'snapshots',
    title: 'Internal snapshots sharing clusters',
    about: 'Two snapshots and the active disk share most data clusters (refcount 2 or 3); the writes after each snapshot made private copies.',
    commands: [
      'qemu-img create -f qcow2 snapshots.qcow2 64M',
      'qemu-io -c "write -P 0x11 0 1M" snapshots.qcow2',
      'qemu-img snapshot -c first snapshots.qcow2',
      'qemu-io -c "write -P 0x22 256k 256k" snapshots.qcow2',
      'qemu-img snapshot -c second snapshots.qcow2',
      'qemu-io -c "write -P 0x33 512k 128k" -c "write -P 0x44 4M 64k" snapshots.qcow2',
    ],
    look: 'view=snapshots',
    verdict: CLEAN,
  },
  {
    id: 'compressed',
    title: 'Compressed clusters',
    about: 'Two clusters stored deflate-compressed (a few hundred bytes each) next to one ordinary data cluster.',
    commands: [
      'qemu-img create -f qcow2 compressed.qcow2 64M',
      'qemu-io -c "write -c -P 0x61 0 128k" -c "write -P 0x62 128k 64k" compressed.qcow2',
    ],
    look: 'view=l1&sel=l2:0.0',
    verdict: CLEAN,
  },
  {
    id: 'subclusters',
    title: 'Extended L2 entries with subclusters',
    about: 'Each 64 KiB cluster is 32 subclusters of 2 KiB: a 4 KiB write allocates the cluster but marks only two subclusters as written; a zero write marks subclusters as zeros without any cluster.',
    commands: [
      'qemu-img create -f qcow2 -o extended_l2=on subclusters.qcow2 64M',
      'qemu-io -c "write -P 0x71 0 4k" -c "write -P 0x72 40k 8k" -c "write -z 128k 16k" subclusters.qcow2',
    ],
    look: 'view=l1&sel=l2:0.0',
    verdict: CLEAN,
  },
  {
    id: 'zeros',
    title: 'Zero clusters',
    about: 'Zero writes: one keeps its cluster allocated with the zero flag set, one (-u) gives the cluster back, one marks an unallocated range as zeros.',
    commands: [
      'qemu-img create -f qcow2 zeros.qcow2 64M',
      'qemu-io -c "write -P 0x5a 0 256k" -c "write -z 64k 64k" -c "write -z -u 128k 64k" -c "write -z 1M 128k" zeros.qcow2',
    ],
    look: 'view=l1&sel=l2:0.1',
    verdict: CLEAN,
  },
  {
    id: 'chain',
    title: 'A backing chain of three',
    about: 'top.qcow2 reads through middle.qcow2 to base.qcow2: each file holds only what was written to it; a 4 KiB write to the top copied its cluster up from below.',
    commands: [
      'qemu-img create -f qcow2 base.qcow2 64M',
      'qemu-io -c "write -P 0xa1 0 192k" base.qcow2',
      'qemu-img create -f qcow2 -b base.qcow2 -F qcow2 middle.qcow2',
      'qemu-io -c "write -P 0xb2 64k 64k" middle.qcow2',
      'qemu-img create -f qcow2 -b middle.qcow2 -F qcow2 top.qcow2',
      'qemu-io -c "write -P 0xc3 128k 4k" top.qcow2',
    ],
    look: 'view=translate&offset=0x10000',
    verdict: CLEAN,
  },
  {
    id: 'small-clusters',
    title: '512-byte clusters',
    about: 'The smallest cluster size: an L2 table maps only 32 KiB, so even a 16 MiB disk needs an L1 table of eight clusters.',
    commands: [
      'qemu-img create -f qcow2 -o cluster_size=512 small-clusters.qcow2 16M',
      'qemu-io -c "write -P 0x12 0 8k" -c "write -P 0x13 1M 1k" small-clusters.qcow2',
    ],
    look: 'view=map',
    verdict: CLEAN,
  },
  {
    id: 'big-clusters',
    title: '2 MiB clusters',
    about: 'The largest cluster size: 8 KiB of data costs two whole 2 MiB clusters, and the tables take a cluster each, so the file is 14 MiB.',
    commands: [
      'qemu-img create -f qcow2 -o cluster_size=2M big-clusters.qcow2 64M',
      'qemu-io -c "write -P 0x21 0 4k" -c "write -P 0x22 32M 4k" big-clusters.qcow2',
    ],
    look: 'view=map',
    verdict: CLEAN,
  },
  {
    id: 'leak',
    title: 'A leaked cluster',
    about: 'An L2 entry was cleared by hand: its data cluster keeps refcount 1 though nothing points to it. Wasted space, no harm to data.',
    commands: [
      'qemu-img create -f qcow2 leak.qcow2 64M',
      'qemu-io -c "write -P 0x11 0 128k" leak.qcow2',
      'qemu-io -f raw -c "write -P 0 0x40008 8" leak.qcow2',
    ],
    look: 'view=map',
    verdict: { corruptions: 0, leaks: 1 },
  },
  {
    id: 'low-refcount',
    title: 'A refcount that is too low',
    about: 'A data cluster in use has refcount 0: the next allocation could hand it out again and overwrite the data. A real corruption.',
    commands: [
      'qemu-img create -f qcow2 low-refcount.qcow2 64M',
      'qemu-io -c "write -P 0x11 0 128k" low-refcount.qcow2',
      'qemu-io -f raw -c "write -P 0 0x2000b 1" low-refcount.qcow2',
    ],
    look: 'view=map',
    verdict: { corruptions: 2, leaks: 0 },
  },
  {
    id: 'dirty',
    title: 'A dirty image with lazy refcounts',
    about: 'With lazy_refcounts, QEMU writes refcounts back only when it closes the image; this one was killed first, so the dirty bit is set and two data clusters have refcount 0 until a repair.',
    commands: [
      'qemu-img create -f qcow2 -o lazy_refcounts=on dirty.qcow2 64M',
      'qemu-io -c "write -P 0x5a 0 128k" -c "sigraise 9" dirty.qcow2',
    ],
    look: 'view=header&sel=field:incompatible_features',
    verdict: { corruptions: 4, leaks: 0 },
  },
  {
    id: 'bitmap',
    title: 'Persistent dirty bitmaps',
    about: 'Two bitmaps in the bitmaps extension: one enabled (tracking writes for the next backup), one disabled with a 512 KiB granularity.',
    commands: [
      'qemu-img create -f qcow2 bitmaps.qcow2 64M',
      'qemu-io -c "write -P 0x31 0 1M" bitmaps.qcow2',
      'qemu-img bitmap --add bitmaps.qcow2 backup-0',
      'qemu-img bitmap --add -g 512k --disable bitmaps.qcow2 old',
    ],
    look: 'view=map',
    verdict: CLEAN,
  },
];

export function galleryRecipe(id: string): GalleryRecipe | undefined {
  return GALLERY.find((r) => r.id === id);
}

/** Build a gallery image with the engine: every file its recipe makes, the one to show last. */
export function buildGalleryImage(recipe: GalleryRecipe): Promise<RecipeFile[]> {
  return runRecipe(recipe.commands);
}
