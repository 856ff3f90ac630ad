// Every verb of the command line, in the order `qcowscope --help` lists them, each loaded only when
// it runs: start-up is part of every command's time, so `map` does not compile `create`'s code.
// A new verb adds one line here (its module exports the Command).
import type { Command } from '../command.ts';

export interface Verb {
  name: string;
  load: () => Promise<Command>;
}

export const VERBS: Verb[] = [
  { name: 'info', load: async () => (await import('./info.ts')).info },
  { name: 'map', load: async () => (await import('./map.ts')).map },
  { name: 'snapshot', load: async () => (await import('./snapshot.ts')).snapshot },
  { name: 'export', load: async () => (await import('./export.ts')).exportCmd },
  { name: 'check', load: async () => (await import('./check.ts')).check },
  { name: 'layout', load: async () => (await import('./layout.ts')).layout },
  { name: 'create', load: async () => (await import('./create.ts')).create },
  { name: 'write', load: async () => (await import('./write.ts')).write },
  { name: 'measure', load: async () => (await import('./measure.ts')).measureCmd },
  { name: 'compare', load: async () => (await import('./compare.ts')).compareCmd },
  { name: 'bitmap', load: async () => (await import('./bitmap.ts')).bitmapCmd },
  { name: 'rebase', load: async () => (await import('./rebase.ts')).rebaseCmd },
  { name: 'commit', load: async () => (await import('./commit.ts')).commitCmd },
];
