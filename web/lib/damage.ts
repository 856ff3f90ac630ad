// Where an open error belongs on screen: the view that draws the structure it is in (an image
// that failed validation, worker/api.ts OpenDamage, tied by its `area` code), and which views
// still work.
import type { OpenDamage } from '../../worker/api.ts';
import { VIEWS, viewEntry, type ViewName } from '../views/registry.ts';

/** The view drawing the structure an open error is in (the Header when no view draws it). */
export function damageView(d: OpenDamage): ViewName {
  return VIEWS.find((v) => (v as { draws?: readonly string[] }).draws?.includes(d.area))?.id ?? 'header';
}

/** The view can be drawn for an image with this damage. */
export function viewWorks(view: ViewName, d: OpenDamage): boolean {
  return d.level === 'tables' || !!viewEntry(view).withoutTables;
}

export function damageExtent(d: OpenDamage): string {
  if (d.level === 'tables') return 'The rest of the image is shown, read-only.';
  if (d.level === 'header') return 'Its header is shown, and its bytes in Hex; the views that need its tables cannot be shown.';
  return 'Its header fields are shown as stored, and its bytes in Hex.';
}
