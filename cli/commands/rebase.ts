// `qcowscope rebase [-f qcow2] [-q] [-u] [-b BACKING] [-F FORMAT] IMAGE`: qemu-img rebase. With -u
// only the header's backing link changes (no -b, or -b "": none); without it the overlay first
// takes the old chain's data wherever the new backing reads differently, so its guest disk stays
// the same. Engine: core/image/rebase.ts. Messages and exit codes are qemu-img 7.2's, including
// its refusal of a new backing file without -F, which comes after the copy as in QEMU.
import * as fs from 'node:fs';
import { QcowError } from '../../core/errors.ts';
import type { Layer } from '../../core/image/layer.ts';
import { rebaseImage } from '../../core/image/rebase.ts';
import { openImage, openRaw, probeFormat, resolveBackingPath } from '../open.ts';
import type { Command } from '../command.ts';
import { cliError, usageExit } from '../qemu-options.ts';

export const rebaseCmd: Command = {
  name: 'rebase',
  usage: 'rebase [-f qcow2] [-q] [-u] [-b BACKING] [-F FORMAT] IMAGE',
  options: {
    unsafe: { type: 'boolean', short: 'u' },
    backing: { type: 'string', short: 'b' },
    'backing-format': { type: 'string', short: 'F' },
    quiet: { type: 'boolean', short: 'q' },
    cache: { type: 'string', short: 't' },
    'source-cache': { type: 'string', short: 'T' },
  },
  async run({ values, positionals }) {
    if (positionals.length !== 1) throw usageExit('Expecting one image file name');
    const unsafe = values.unsafe === true;
    const backing = values.backing as string | undefined;
    const format = values['backing-format'] as string | undefined;
    if (!unsafe && backing === undefined) throw usageExit('Must specify backing file (-b) or use unsafe mode (-u)');
    const file = positionals[0]!;
    const img = await openImage(file, { writable: true, noBacking: unsafe });
    let newChain: Layer | null = null;
    try {
      if (!unsafe && backing !== '') newChain = await openNewBacking(file, backing!, format);
      const standalone = backing === undefined || backing === '';
      // without a format qemu-img refuses the new link, after the copy
      const link = standalone ? null : format === undefined ? undefined : { file: backing!, format };
      await rebaseImage(img, link, unsafe ? {} : { copyFrom: newChain });
      if (link === undefined) throw cliError(`Could not change the backing file to '${backing}': backing format must be specified`);
    } finally {
      await newChain?.close();
      await img.close();
    }
    return 0;
  },
};

/** The new backing file, named relative to the image as QEMU resolves it, with qemu-img's refusal words. */
async function openNewBacking(file: string, name: string, format: string | undefined): Promise<Layer> {
  const p = resolveBackingPath(file, name);
  const prefix = `Could not open new backing file '${name}': `;
  if (!fs.existsSync(p)) throw cliError(`${prefix}Could not open '${p}': No such file or directory`);
  const fmt = format ?? (await probeFormat(p));
  try {
    if (fmt === 'qcow2') {
      await refuseChainThrough(file, p, prefix);
      return await openImage(p);
    }
    if (fmt === 'raw') return openRaw(p);
  } catch (e) {
    throw e instanceof QcowError ? e.prefixed(prefix) : e;
  }
  throw new QcowError('NOT_SUPPORTED', `${prefix}Backing file format '${fmt}' is not supported`, { format: fmt });
}

/**
 * QEMU opens the new backing chain while the image is open for writing: a chain that reaches the
 * image itself (rebasing a file onto its own overlay) fails on the image's lock, in these words,
 * one "Could not open backing file: " per link on the way. Without it the rebase would write a
 * backing loop.
 */
async function refuseChainThrough(file: string, first: string, prefix: string): Promise<void> {
  const self = fs.statSync(file);
  const seen = new Set<string>();
  let cur = first;
  for (let depth = 0; depth < 64; depth++) {
    let st: fs.Stats;
    try {
      st = fs.statSync(cur);
    } catch {
      return; // the open reports a missing file in its own words
    }
    if (st.dev === self.dev && st.ino === self.ino) {
      throw cliError(`${prefix}${'Could not open backing file: '.repeat(depth)}Failed to get shared "write" lock`, `Is another process using the image [${cur}]?\n`);
    }
    const key = `${st.dev}:${st.ino}`;
    if (seen.has(key) || (await probeFormat(cur)) !== 'qcow2') return;
    seen.add(key);
    const link = await openImage(cur, { noBacking: true, dataFileOptional: true }).then(async (i) => {
      const name = i.header.backingFile;
      await i.close();
      return name;
    }, () => undefined);
    if (link === undefined) return;
    cur = resolveBackingPath(cur, link);
  }
}
