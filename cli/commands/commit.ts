// `qcowscope commit [-f qcow2] [-q] [-d] [-p] [-r RATE_LIMIT] [-b BASE] IMAGE`: qemu-img commit.
// The data the image and the links above BASE (default: its backing file) allocate is written
// into BASE, a qcow2 image or a raw file, grown to the image's size when smaller; without -d (and
// -b, which implies -d, as in qemu-img) the image is then emptied. "Image committed." and the
// refusals as qemu-img 7.2 prints them; -r is read as qemu-img reads it (no throttling here).
// Engine: core/image/commit.ts.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isQcowError } from '../../core/errors.ts';
import { storeBitmapsAsOnClose } from '../../core/image/bitmap-ops.ts';
import { commitInto, qcow2Target, rawTarget } from '../../core/image/commit.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import type { Layer } from '../../core/image/layer.ts';
import { openImage, probeFormat, resolveBackingPath } from '../open.ts';
import { NodeFileStore } from '../node-file-store.ts';
import { flag, valued, type Command } from '../command.ts';
import { cliError, cvtnum, usageExit } from '../qemu-options.ts';
import { Progress } from '../progress.ts';

/** The links of an opened chain, top first, each with the path QEMU opened it from. */
function linksOf(top: Qcow2Image, file: string): Array<{ layer: Layer; path: string; backingFile?: string }> {
  const out: Array<{ layer: Layer; path: string; backingFile?: string }> = [];
  let layer: Layer | null = top;
  let p = file;
  while (layer) {
    const backingFile: string | undefined = layer instanceof Qcow2Image ? layer.header.backingFile : undefined;
    out.push({ layer, path: p, backingFile });
    if (backingFile === undefined || !(layer instanceof Qcow2Image)) break;
    p = resolveBackingPath(p, backingFile);
    layer = layer.backing;
  }
  return out;
}

function realpath(p: string): string | undefined {
  try {
    return fs.realpathSync(p);
  } catch {
    return undefined;
  }
}

/** QEMU's bdrv_find_backing_image: the depth of the link named `base` below the top, or -1. */
function findBase(links: ReturnType<typeof linksOf>, base: string): number {
  for (let i = 0; i + 1 < links.length; i++) {
    const cur = links[i]!;
    if (cur.backingFile === undefined) break;
    if (path.isAbsolute(base) && base === cur.backingFile) return i + 1;
    const want = realpath(resolveBackingPath(cur.path, base));
    if (want !== undefined && want === realpath(links[i + 1]!.path)) return i + 1;
  }
  return -1;
}

export const commitCmd: Command = {
  name: 'commit',
  usage: 'commit [-f qcow2] [-q] [-d] [-p] [-r RATE_LIMIT] [-b BASE] IMAGE',
  options: {
    'keep-overlay': flag('d'),
    quiet: flag('q'),
    progress: flag('p'),
    base: valued('b'),
    'rate-limit': valued('r'),
    cache: valued('t'),
  },
  async run({ values, positionals, out, write }) {
    const rate = values['rate-limit'] as string | undefined;
    if (rate !== undefined) cvtnum('rate limit', rate);
    if (positionals.length !== 1) throw usageExit('Expecting one image file name');
    const file = positionals[0]!;
    const baseName = values.base as string | undefined;
    // -b implies -d (qemu-img)
    const keep = values['keep-overlay'] === true || baseName !== undefined;
    // opened whole first, as qemu-img opens it: a missing or broken backing chain is refused here
    const chain = await openImage(file);
    let depth: number;
    let basePath: string;
    const links = linksOf(chain, file);
    try {
      if (baseName !== undefined) {
        depth = findBase(links, baseName);
        if (depth < 0) throw cliError(`Did not find '${baseName}' in the backing chain of '${file}'`);
      } else {
        if (links.length < 2) throw cliError('Image does not have a backing file');
        depth = 1;
      }
      basePath = links[depth]!.path;
    } catch (e) {
      await chain.close();
      throw e;
    }
    const baseIsQcow2 = links[depth]!.layer instanceof Qcow2Image;
    // the image itself writable only when it is emptied; the links above BASE read through it
    const overlay = keep ? chain : await openImage(file, { writable: true, noBacking: true });
    if (!keep) await chain.close();
    // qemu-img commit: progress in steps of 1%, from 0 to 100 (the block job's own steps in between)
    const progress = new Progress(values.progress === true && values.quiet !== true, 1, write);
    progress.print(0, 100);
    let reported = 0;
    const onProgress = (d: number, t: number): void => {
      progress.print(((d - reported) / t) * 100, 100);
      reported = d;
    };
    try {
      await commitTo();
    } catch (e) {
      // qemu-img reports the commit job's failure by its errno only
      if (isQcowError(e) && e.details.reason === 'v2-resize') throw cliError('Block job failed: Operation not supported');
      throw e;
    } finally {
      await overlay.close();
    }
    if (keep && chain.bitmaps.length > 0) {
      // qemu-img opens the image read-write even with -d: its bitmaps are stored again on close
      const top = await openImage(file, { writable: true, noBacking: true });
      try {
        await storeBitmapsAsOnClose(top);
      } finally {
        await top.close();
      }
    }
    progress.print(100, 0);
    progress.end();
    if (values.quiet !== true) out('Image committed.');
    return 0;

    async function commitTo(): Promise<void> {
      const fmt = baseIsQcow2 ? 'qcow2' : await probeFormat(basePath);
      if (fmt === 'qcow2') {
        const base = await openImage(basePath, { writable: true });
        try {
          await commitInto(overlay, qcow2Target(base), { keep, depth, onProgress });
        } finally {
          await base.close();
        }
      } else {
        const store = NodeFileStore.open(basePath, { writable: true });
        try {
          await commitInto(overlay, rawTarget(store), { keep, depth, onProgress });
        } finally {
          await store.close();
        }
      }
    }
  },
};
