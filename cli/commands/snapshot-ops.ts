// Snapshot create / revert / delete from the command line (filled in by the snapshot engine).
import { QcowError } from '../../core/errors.ts';
import type { CommandContext } from '../command.ts';

export async function snapshotOps(mode: 'create' | 'apply' | 'delete', _arg: string, _files: string[], _ctx: CommandContext): Promise<number> {
  throw new QcowError('NOT_SUPPORTED', `snapshot ${mode} is not implemented yet`, {});
}
