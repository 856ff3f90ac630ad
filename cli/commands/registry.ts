// Verbs added beside the reading ones (check, create, layout): each module registers here.
import type { Command } from '../command.ts';
import { check } from './check.ts';
import { layout } from './layout.ts';
import { create } from './create.ts';
import { write } from './write.ts';
import { measureCmd } from './measure.ts';
import { compareCmd } from './compare.ts';
import { bitmapCmd } from './bitmap.ts';
import { rebaseCmd } from './rebase.ts';
import { commitCmd } from './commit.ts';

export const extraCommands: Command[] = [
  check,
  layout,
  create,
  write,
  measureCmd,
  compareCmd,
  bitmapCmd,
  rebaseCmd,
  commitCmd,
];
