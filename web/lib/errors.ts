// The one error formatter of the page: every failure the engine or the browser reports becomes
// a Message (the top bar's line) or a line of text next to what failed, worded the same way.
import { QcowError } from '../../core/errors.ts';

export interface Message {
  kind: 'error' | 'info';
  text: string;
  code?: string;
}

/** Any failure as the top bar's message (a cancel is news, not an error). */
export function describeError(e: unknown): Message {
  if (e instanceof QcowError && e.code === 'CANCELLED') return { kind: 'info', text: 'Cancelled: nothing was changed.' };
  if (e instanceof QcowError) return { kind: 'error', text: e.message, code: e.code };
  if (e instanceof DOMException && e.name === 'AbortError') return { kind: 'info', text: 'Cancelled.' };
  const err = e as Error;
  return { kind: 'error', text: `Internal error: ${err?.message ?? String(e)}`, code: 'INTERNAL' };
}

/** A failure as one line of text, for a view that shows it in place ("message (CODE)"). */
export function errorText(e: unknown): string {
  const m = describeError(e);
  return m.code && m.code !== 'INTERNAL' ? `${m.text} (${m.code})` : m.text;
}

/**
 * An image that could not be opened at all: the file's name, then what is wrong with it
 * ("disk.qcow2: not a qcow2 image"; a zero-byte file "the file is empty").
 */
export function openFailure(name: string, size: number | undefined, e: unknown): Message {
  const m = describeError(e);
  if (m.kind !== 'error') return m;
  let what: string;
  if (size === 0) what = 'the file is empty';
  else if (e instanceof QcowError && e.code === 'NOT_QCOW2') what = 'not a qcow2 image (it does not start with the qcow2 magic "QFI\\xfb")';
  // "Unsupported qcow2 version 4" reads on after the name as "unsupported qcow2 version 4" (not "L1 ..." → "l1 ...").
  else what = /^[A-Z][a-z]/.test(m.text) ? m.text[0]!.toLowerCase() + m.text.slice(1) : m.text;
  return { kind: 'error', text: `${name}: ${what}`, code: m.code };
}
