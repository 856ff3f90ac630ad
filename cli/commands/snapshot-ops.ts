// `qcowscope snapshot -c NAME | -a ID_OR_NAME | -d ID_OR_NAME IMAGE...`: internal snapshot
// create / revert / delete on one image or a group (all or none, core/image/group.ts).
// `-a` and `-d` take an ID or a name, the ID first (DESIGN.md). `--journal` prints every write
// the operation made, with its purpose, the flushes and the commit point.
import * as fs from 'node:fs';
import { QcowError } from '../../core/errors.ts';
import { groupCreate, groupDelete, groupRevert } from '../../core/image/group.ts';
import type { Journal } from '../../core/image/journal.ts';
import type { Qcow2Image } from '../../core/image/qcow2-image.ts';
import type { SnapshotOpResult } from '../../core/image/snapshot.ts';
import { openImage } from '../open.ts';
import type { CommandContext } from '../command.ts';

/** Refuse the same file given twice (two handles would plan the same free clusters). */
export function assertDistinctFiles(files: string[]): void {
  const seen = new Map<string, string>();
  for (const f of files) {
    let key: string;
    try {
      const st = fs.statSync(f);
      key = `${st.dev}:${st.ino}`;
    } catch {
      continue; // openImage reports the missing file
    }
    const prev = seen.get(key);
    if (prev !== undefined) {
      throw new QcowError('INVALID_ARGUMENT', `'${f}' and '${prev}' are the same file`, { files: [prev, f] });
    }
    seen.set(key, f);
  }
}

async function openAll(files: string[]): Promise<Qcow2Image[]> {
  const imgs: Qcow2Image[] = [];
  try {
    for (const f of files) imgs.push(await openImage(f, { writable: true, noBacking: true }));
  } catch (e) {
    for (const i of imgs) await i.close();
    throw e;
  }
  return imgs;
}

export function formatJournal(j: Journal, file: string): string {
  const lines = [`${file}: ${j.operation}`];
  let n = 0;
  for (const e of j.entries) {
    if (e.kind === 'write') {
      n++;
      lines.push(`  write ${String(n).padStart(3)}  offset 0x${e.offset.toString(16).padStart(8, '0')}  ${String(e.length).padStart(8)} bytes  ${e.purpose}${e.commit ? '  <- commit' : ''}`);
    } else if (e.kind === 'flush') {
      lines.push(`  flush       ${e.purpose}`);
    } else {
      lines.push(`  truncate    to ${e.offset} bytes  ${e.purpose}`);
    }
  }
  return lines.join('\n');
}

export async function snapshotOps(mode: 'create' | 'apply' | 'delete', arg: string, files: string[], ctx: CommandContext): Promise<number> {
  assertDistinctFiles(files);
  const imgs = await openAll(files);
  let results: SnapshotOpResult[];
  try {
    if (mode === 'create') results = await groupCreate(imgs, arg);
    else if (mode === 'apply') results = await groupRevert(imgs, arg);
    else results = await groupDelete(imgs, arg);
  } finally {
    for (const i of imgs) await i.close();
  }
  if (ctx.values.journal) results.forEach((r, i) => ctx.out(formatJournal(r.journal, files[i]!)));
  return 0;
}
