// INTERIM demo image, built in memory with the engine's own create/write/snapshot operations,
// until core/image/demo.ts (the lead's) lands: a 64 MiB disk with data, two snapshots, clusters
// shared between them and the active disk, and clusters each holds alone. (No compressed cluster
// yet: the engine has no compressed-write path.)
import { MemoryStore } from '../core/io/memory-store.ts';
import { createImage } from '../core/image/create.ts';
import { Qcow2Image } from '../core/image/qcow2-image.ts';
import { writeGuest } from '../core/image/write.ts';
import { createSnapshot } from '../core/image/snapshot.ts';

const MiB = 1024 * 1024;

function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  const text = new TextEncoder().encode(`qcowscope demo block ${seed} `);
  for (let i = 0; i < length; i++) b[i] = text[i % text.length]!;
  return b;
}

export async function buildDemoImage(): Promise<MemoryStore> {
  const store = new MemoryStore(new Uint8Array(0), { name: 'demo.qcow2' });
  await createImage(store, { size: 64 * MiB });
  const img = await Qcow2Image.open(store, { writable: true, backing: null });
  // "Install": a boot area and some files.
  await writeGuest(img, 0, pattern(256 * 1024, 1));
  await writeGuest(img, 8 * MiB, pattern(512 * 1024, 2));
  await writeGuest(img, 40 * MiB, pattern(128 * 1024, 3));
  await createSnapshot(img, 'installed', { dateSec: 1_700_000_000, dateNsec: 0 });
  // "Configure": rewrite some clusters (copy-on-write) and add new ones.
  await writeGuest(img, 64 * 1024, pattern(64 * 1024, 4));
  await writeGuest(img, 8 * MiB + 128 * 1024, pattern(128 * 1024, 5));
  await writeGuest(img, 20 * MiB, pattern(192 * 1024, 6));
  await createSnapshot(img, 'configured', { dateSec: 1_700_086_400, dateNsec: 0 });
  // "Use": the active disk moves on.
  await writeGuest(img, 0, pattern(64 * 1024, 7));
  await writeGuest(img, 20 * MiB + 64 * 1024, pattern(64 * 1024, 8));
  await writeGuest(img, 56 * MiB, pattern(320 * 1024, 9));
  // Not img.close(): that would close the store the worker keeps using.
  return store;
}
