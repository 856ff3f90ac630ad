// Opening an example: a gallery image at the view its recipe suggests, or a lesson at its first
// step. Shared by the gallery, the lessons list and the start screen.
import type { AppState } from '../lib/app.svelte.ts';
import { restoreHash } from '../links/links.svelte.ts';
import { galleryRecipe } from '../../core/gallery/recipes.ts';
import { closeLesson, goToStep } from '../lessons/guide.svelte.ts';

/** Open gallery image `id` (rebuilt in the page) at the view its recipe suggests. */
export async function openExample(app: AppState, id: string): Promise<void> {
  const r = galleryRecipe(id);
  if (!r) return;
  closeLesson();
  // A new history entry: Back returns to what was shown before.
  const hash = `#img=gallery:${id}&${r.look}`;
  history.pushState(null, '', hash);
  await restoreHash(app, hash);
}

/** Start lesson `id` at its first step. */
export function startLesson(app: AppState, id: string): Promise<void> {
  return goToStep(app, id, 1);
}
