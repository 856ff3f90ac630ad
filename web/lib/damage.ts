// Where an open error belongs on screen: the view that draws the structure it names (an image
// that failed validation, worker/api.ts OpenDamage), and which views still work.
import type { OpenDamage } from '../../worker/api.ts';
import type { ViewName } from './app.svelte.ts';

/** The view drawing the structure an open error names. */
export function damageView(d: OpenDamage): ViewName {
  const s = (d.structure ?? 'header').toLowerCase();
  if (s.includes('snapshot')) return 'snapshots';
  if (s.includes('refcount') || s.includes('reference count')) return 'refcounts';
  if (s.includes('l1') || s.includes('l2')) return 'l1';
  if (s.includes('bitmap')) return 'map';
  return 'header';
}

/** Views that only need the header and the raw bytes: they work whatever the damage. */
export const VIEWS_WITHOUT_TABLES: readonly ViewName[] = ['header', 'hex'];

export function damageExtent(d: OpenDamage): string {
  if (d.level === 'tables') return 'The rest of the image is shown, read-only.';
  if (d.level === 'header') return 'Its header is shown, and its bytes in Hex; the views that need its tables cannot be shown.';
  return 'Its header fields are shown as stored, and its bytes in Hex.';
}
