// A link being opened (on load, or Back/Forward to one): a lesson's link goes to its step, an
// image's link restores its address. Returns false when the fragment names neither.
import type { AppState } from '../lib/app.svelte.ts';
import { goToStep } from '../lessons/guide.svelte.ts';
import { parseAddress } from './address.ts';
import { restoreHash } from './links.svelte.ts';

export function followLink(app: AppState): boolean {
  const a = parseAddress(location.hash);
  if (a.lesson) void goToStep(app, a.lesson, a.step ?? 1);
  else if (a.img) void restoreHash(app, location.hash);
  else return false;
  return true;
}
