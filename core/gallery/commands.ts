// The gallery's recipe language: the few qemu-img and qemu-io command lines its recipes use,
// parsed into steps the engine runs (core/gallery/run-recipe.ts). The lines are the very text the
// page shows and the tests run with QEMU's tools, so one text says what both do.
//
//   qemu-img create -f qcow2 [-o key=value,...] [-b BACKING -F qcow2] FILE [SIZE]
//   qemu-img snapshot -c NAME FILE
//   qemu-img bitmap --add [-g GRANULARITY] [--disable] FILE NAME
//   qemu-io [-f raw] -c "write [-P BYTE] [-z [-u]] [-c] OFFSET LENGTH" [-c "sigraise 9"] ... FILE
import { QcowError } from '../errors.ts';

export interface CreateStep {
  kind: 'create';
  file: string;
  /** Undefined: the backing file's size (qemu-img create -b without a size). */
  size?: number;
  options: Record<string, string>;
  backingFile?: string;
  backingFormat?: string;
}

export type IoCommand =
  | { kind: 'write'; offset: number; length: number; pattern: number; zero: boolean; unmap: boolean; compressed: boolean }
  /** qemu-io's `sigraise 9`: the process is killed, nothing more is written (no clean close). */
  | { kind: 'kill' };

export interface IoStep {
  kind: 'io';
  file: string;
  /** `-f raw`: the commands write the file's own bytes, not the guest disk. */
  raw: boolean;
  commands: IoCommand[];
}

export type RecipeStep =
  | CreateStep
  | IoStep
  | { kind: 'snapshot'; file: string; name: string }
  | { kind: 'bitmap'; file: string; name: string; granularity?: number; disabled: boolean };

function bad(line: string, why: string): QcowError {
  return new QcowError('INVALID_ARGUMENT', `Recipe line not understood (${why}): ${line}`, { line });
}

/** Split a command line into words: spaces separate, double quotes group. */
export function shellWords(line: string): string[] {
  const out: string[] = [];
  const re = /"([^"]*)"|(\S+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) out.push(m[1] ?? m[2]!);
  return out;
}

const SUFFIX: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** A size or offset as QEMU's tools read it: decimal or 0x hex, with an optional k/M/G suffix. */
export function parseQemuSize(text: string): number {
  const m = /^(0x[0-9a-f]+|\d+)([bkmg]?)$/i.exec(text);
  if (!m) throw new QcowError('INVALID_ARGUMENT', `Not a size: ${text}`, { text });
  return Number(m[1]) * SUFFIX[m[2]!.toLowerCase()]!;
}

function parseWrite(words: string[], line: string): IoCommand {
  let pattern = 0xcd; // qemu-io's default pattern
  let zero = false;
  let unmap = false;
  let compressed = false;
  const rest: string[] = [];
  for (let i = 1; i < words.length; i++) {
    const w = words[i]!;
    if (w === '-P') pattern = parseQemuSize(words[++i] ?? '');
    else if (w === '-z') zero = true;
    else if (w === '-u') unmap = true;
    else if (w === '-c') compressed = true;
    else rest.push(w);
  }
  if (rest.length !== 2) throw bad(line, 'write takes an offset and a length');
  return { kind: 'write', offset: parseQemuSize(rest[0]!), length: parseQemuSize(rest[1]!), pattern, zero, unmap, compressed };
}

function parseIo(words: string[], line: string): IoStep {
  let raw = false;
  const commands: IoCommand[] = [];
  const rest: string[] = [];
  for (let i = 1; i < words.length; i++) {
    const w = words[i]!;
    if (w === '-f') raw = words[++i] === 'raw';
    else if (w === '-c') {
      const c = shellWords(words[++i] ?? '');
      if (c[0] === 'write') commands.push(parseWrite(c, line));
      else if (c[0] === 'sigraise' && c[1] === '9') commands.push({ kind: 'kill' });
      else throw bad(line, `qemu-io command ${c[0]}`);
    } else rest.push(w);
  }
  if (rest.length !== 1) throw bad(line, 'one image file');
  return { kind: 'io', file: rest[0]!, raw, commands };
}

function parseCreate(words: string[], line: string): CreateStep {
  const options: Record<string, string> = {};
  let backingFile: string | undefined;
  let backingFormat: string | undefined;
  const rest: string[] = [];
  for (let i = 2; i < words.length; i++) {
    const w = words[i]!;
    if (w === '-f') {
      if (words[++i] !== 'qcow2') throw bad(line, 'only qcow2');
    } else if (w === '-q') continue;
    else if (w === '-o') {
      for (const kv of (words[++i] ?? '').split(',')) {
        const [k, v] = kv.split('=');
        options[k!] = v ?? 'on';
      }
    } else if (w === '-b') backingFile = words[++i];
    else if (w === '-F') backingFormat = words[++i];
    else rest.push(w);
  }
  if (rest.length < 1 || rest.length > 2) throw bad(line, 'create takes a file and a size');
  return { kind: 'create', file: rest[0]!, size: rest[1] !== undefined ? parseQemuSize(rest[1]) : undefined, options, backingFile, backingFormat };
}

/** One recipe line as a step. */
export function parseRecipeLine(line: string): RecipeStep {
  const words = shellWords(line);
  if (words[0] === 'qemu-io') return parseIo(words, line);
  if (words[0] !== 'qemu-img') throw bad(line, 'not qemu-img or qemu-io');
  if (words[1] === 'create') return parseCreate(words, line);
  if (words[1] === 'snapshot' && words[2] === '-c' && words.length === 5) return { kind: 'snapshot', name: words[3]!, file: words[4]! };
  if (words[1] === 'bitmap' && words[2] === '--add') {
    let granularity: number | undefined;
    let disabled = false;
    const rest: string[] = [];
    for (let i = 3; i < words.length; i++) {
      const w = words[i]!;
      if (w === '-g') granularity = parseQemuSize(words[++i] ?? '');
      else if (w === '--disable') disabled = true;
      else rest.push(w);
    }
    if (rest.length !== 2) throw bad(line, 'bitmap --add takes a file and a name');
    return { kind: 'bitmap', file: rest[0]!, name: rest[1]!, granularity, disabled };
  }
  throw bad(line, `qemu-img ${words[1]}`);
}
