// Verbs added beside the reading ones (check, create, layout): each module registers here.
import type { Command } from '../command.ts';

export const extraCommands: Command[] = [];
