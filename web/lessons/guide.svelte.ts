// The lesson guide's state: which lesson is open and at which step, and moving between steps by
// restoring each step's address in the live views (the lesson's image opened first). The current
// lesson and step are part of the page's address, so a lesson's link opens at its step.
import type { AppState } from '../lib/app.svelte.ts';
import { applyAddress, restoring, sourceOf } from '../links/links.svelte.ts';
import { lesson, type Lesson } from './lessons.ts';

export const guide = $state<{ lessonId: string | null; step: number; busy: boolean; error: string | null }>({
  lessonId: null,
  step: 1,
  busy: false,
  error: null,
});

export function currentLesson(): Lesson | undefined {
  return guide.lessonId ? lesson(guide.lessonId) : undefined;
}

/** The lesson part of the address (nothing when no lesson is open). */
export function lessonAddress(): { lesson?: string; step?: number } {
  return guide.lessonId ? { lesson: guide.lessonId, step: guide.step } : {};
}

/** Show step `step` (1-based) of lesson `id`: its image (opened if it is not the active one), view and selection. */
export async function goToStep(app: AppState, id: string, step: number): Promise<void> {
  const l = lesson(id);
  if (!l) return;
  const n = Math.min(Math.max(1, step), l.steps.length);
  guide.lessonId = id;
  guide.step = n;
  guide.error = null;
  guide.busy = true;
  restoring.count++;
  try {
    const onImage = app.active && sourceOf(app.active) === l.img ? app.active : await applyAddress(app, { img: l.img });
    if (!onImage) return;
    const at = await l.steps[n - 1]!.at({ app, tab: onImage });
    await applyAddress(app, { ...at, img: undefined });
  } catch (e) {
    guide.error = e instanceof Error ? e.message : String(e);
  } finally {
    restoring.count--;
    guide.busy = false;
  }
}

/** Do the current step's action (create a snapshot, run the check), then show the step again. */
export async function runStepAction(app: AppState): Promise<void> {
  const l = currentLesson();
  const tab = app.active;
  const action = l?.steps[guide.step - 1]?.action;
  if (!l || !tab || !action) return;
  guide.busy = true;
  try {
    await action.run({ app, tab });
  } finally {
    guide.busy = false;
  }
  await goToStep(app, l.id, guide.step);
}

export function closeLesson(): void {
  guide.lessonId = null;
  guide.step = 1;
  guide.error = null;
}
