// The worker's side of the gallery: build a gallery image with the engine (core/gallery) and
// open every file its recipe made, each over the one before it when it names it as its backing
// file (a chain opens as overlays of their open bases). Nothing leaves the page: the bytes are
// made here, in memory.
import { QcowError } from '../core/errors.ts';
import { buildGalleryImage, galleryRecipe } from '../core/gallery/recipes.ts';
import { Qcow2Image } from '../core/image/qcow2-image.ts';
import { MemoryStore } from '../core/io/memory-store.ts';
import type { ImageStore } from '../core/io/store.ts';
import type { ImageSummary } from './api.ts';
import { TxStore } from './stores/tx-store.ts';

/** Open one file in the worker (over `lender`, the open image that is its backing file, if any). */
export type RegisterFn = (name: string, store: ImageStore, lender: ImageSummary | null) => Promise<ImageSummary>;

/** Build gallery image `id` and open its files, bases first; the image to show is the last. */
export async function openGalleryFiles(id: string, register: RegisterFn): Promise<ImageSummary[]> {
  const recipe = galleryRecipe(id);
  if (!recipe) throw new QcowError('INVALID_ARGUMENT', `There is no gallery image called ${id}`, { id });
  const files = await buildGalleryImage(recipe);
  const opened = new Map<string, ImageSummary>();
  const out: ImageSummary[] = [];
  for (const f of files) {
    const store = new MemoryStore(f.bytes, { name: f.name });
    const backingFile = (await Qcow2Image.readHeader(store)).backingFile;
    const s = await register(f.name, new TxStore(store), backingFile !== undefined ? opened.get(backingFile) ?? null : null);
    opened.set(f.name, s);
    out.push(s);
  }
  return out;
}
