// The qemu-img verbs on the page (measure, compare [-s], bitmaps, rebase [-u] and -b "", commit [-d]): what the panels
// in web/verbs/ call. Reads go straight to the worker; changes go through the app's `write`, so
// they are held in the tab as pending changes (Save or "Download image"), as snapshot operations are.
import type { CompareDTO, CompareSideRef, ImageSummary, MeasureDTO, RebaseTarget, VerbsDetails } from '../../worker/api.ts';
import { engine, withJob } from './engine.ts';
import { askTranslation } from '../links/links.svelte.ts';
import type { AppState, ImageTab } from './app.svelte.ts';

export class Verbs {
  readonly #app: AppState;

  constructor(app: AppState) {
    this.#app = app;
  }

  measure(tab: ImageTab): Promise<MeasureDTO | undefined> {
    return this.#app.run(`Measuring ${tab.name}`, (o) => withJob(o, (j, p) => engine().measure(tab.id, j, p)));
  }

  compare(a: CompareSideRef, b: CompareSideRef, label: string, strict = false): Promise<CompareDTO | undefined> {
    return this.#app.run(`Comparing ${label}`, (o) => withJob(o, (j, p) => engine().compare(a, b, { strict }, j, p)));
  }

  details(tab: ImageTab): Promise<VerbsDetails> {
    return engine().details(tab.id);
  }

  removeBitmap(tab: ImageTab, name: string): Promise<boolean> {
    return this.#app.write(tab, `Removing bitmap ${name}`, () => engine().removeBitmap(tab.id, name));
  }

  /** rebase [-u]: onto an open image (read through from now on), a typed file name (-u), or none (-b ""). */
  async rebase(tab: ImageTab, target: RebaseTarget): Promise<boolean> {
    const before = await this.details(tab).catch(() => undefined);
    const label = 'standalone' in target ? `Making ${tab.name} standalone` : 'Changing the backing file';
    const ok = await this.#app.write(tab, label, (o) => withJob(o, (j, p) => engine().rebase(tab.id, target, j, p)));
    // The new backing image is read-only while lent; the old one may be writable again.
    const touched = new Set([before?.backingImageId, 'baseId' in target ? target.baseId : undefined]);
    await this.#refresh([...this.#app.tabs].filter((t) => t !== tab && touched.has(t.id)));
    return ok;
  }

  /** qemu-img commit [-d] into the open backing image: the changes held in the tabs (-d: the base's only). */
  async commit(tab: ImageTab, base: ImageTab, keep = false): Promise<boolean> {
    const app = this.#app;
    if (!keep && !tab.summary.state.writable) {
      app.message = { kind: 'error', text: `${tab.name} is read-only: ${tab.summary.state.readOnlyReason ?? ''}`, code: 'READ_ONLY' };
      return false;
    }
    if (!keep && !(await app.saving.beforeFirstChange(tab))) return false;
    if (!(await app.saving.beforeFirstChange(base))) return false;
    const res = await app.run(`Committing ${tab.name} into ${base.name}`, (o) => withJob(o, (j, p) => engine().commit(tab.id, keep, j, p)));
    if (!res) {
      await this.#refresh([tab, base], true);
      return false;
    }
    tab.update(res[0]!);
    base.update(res[1]!);
    app.selection = null;
    return true;
  }

  /** Follow a guest offset in the Translation view. */
  followInTranslation(offset: number): void {
    askTranslation(offset);
    this.#app.show('translate');
  }

  /** After Discard: an overlay may stop reading through an open image, which can be written again. */
  async afterDiscard(discarded: ImageTab[]): Promise<void> {
    await this.#refresh(this.#app.tabs.filter((t) => !discarded.includes(t)));
  }

  async #refresh(tabs: ImageTab[], all = false): Promise<void> {
    for (const t of tabs) {
      const fresh: ImageSummary | undefined = await engine().summary(t.id).catch(() => undefined);
      if (!fresh) continue;
      if (all) t.update(fresh);
      else t.summary = fresh;
    }
  }
}
