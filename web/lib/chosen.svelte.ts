// The detail a master list's chosen row loads (an L1 entry's L2 table, a reftable entry's refcount
// block): the loaded value or a one-line error, cleared when the row has nothing to load.
import { errorText } from './errors.ts';

export class ChosenDetail<D> {
  value = $state.raw<D | null>(null);
  error = $state<string | null>(null);

  /** Load the chosen row's detail; `fetch` null means the row points nowhere (nothing to show). */
  async load(fetch: (() => Promise<D>) | null): Promise<void> {
    this.error = null;
    if (!fetch) {
      this.value = null;
      return;
    }
    try {
      this.value = await fetch();
    } catch (err) {
      this.value = null;
      this.error = errorText(err);
    }
  }
}
