// Keyboard movement in a long virtual list (L1, L2, refcount table and block): one row is the
// list's single Tab stop, so Tab passes a list of 8,192 rows in one step instead of thousands;
// arrow keys, Page Up/Down, Home and End move among the rows (scrolling them into view first).
// Rows carry data-row={position}, tabindex and {@attach keys.row(position)}; the list element
// gets tabindex={keys.listTabindex}, onfocusin and onkeydown. While the active row is scrolled out
// of the rendered window (mouse wheel), the list element itself is the Tab stop and hands focus on
// to the active row, scrolling it back into view, so Tab never skips the list.
import { untrack } from 'svelte';

export interface ScrollsToIndex {
  scrollToIndex(i: number, o?: { align?: 'start' | 'center' | 'end' | 'nearest' }): void;
}

export class RovingRows {
  /** Position of the row that is the Tab stop. */
  current = $state(0);
  private readonly total: () => number;
  /** Rows the list shows at once, when it shows a window of them (RowList over WINDOW rows). */
  shown = $state(Infinity);

  constructor(count: () => number) {
    this.total = count;
  }

  private count(): number {
    return Math.min(this.total(), this.shown);
  }

  private active(): number {
    return Math.min(this.current, Math.max(0, this.count() - 1));
  }

  tabindex(position: number): 0 | -1 {
    return position === this.active() ? 0 : -1;
  }

  /** The rows the virtual list has rendered now, by position. */
  private readonly rendered = new Map<number, HTMLElement>();
  /** Bumped whenever a row mounts or unmounts, so `listTabindex` sees the map change. */
  private mounts = $state(0);

  /** The list element is the Tab stop only while the active row is not rendered. */
  readonly listTabindex: 0 | -1 = $derived.by(() => {
    void this.mounts;
    return this.rendered.has(this.active()) ? -1 : 0;
  });

  /**
   * A row focused any way (click, Tab) becomes the Tab stop. Keyboard focus on the list itself
   * (or on its scroller) goes on to the active row; a click there (the scroll bar) stays put.
   */
  focusin(e: FocusEvent, list: ScrollsToIndex | undefined): void {
    const target = e.target as HTMLElement | null;
    const p = Number(target?.dataset?.row);
    if (Number.isInteger(p)) {
      this.current = p;
      return;
    }
    if (!target?.matches(':focus-visible')) return;
    const i = this.active();
    const el = this.rendered.get(i);
    if (el) {
      el.focus();
      return;
    }
    this.pending = i;
    list?.scrollToIndex(i, { align: 'nearest' });
  }

  /** The row to focus as soon as it is rendered (the list renders a scrolled window later). */
  private pending = $state(-1);

  /** Attachment for the row at `position` ({@attach keys.row(i)}): notes that the row is rendered
   *  (for `listTabindex`) and takes focus when asked to. */
  row = (position: number) => (el: HTMLElement): (() => void) => {
    this.rendered.set(position, el);
    untrack(() => this.mounts++);
    const unmount = () => {
      if (this.rendered.get(position) === el) this.rendered.delete(position);
      untrack(() => this.mounts++);
    };
    if (this.pending !== position) return unmount;
    this.pending = -1;
    // A row just rendered stays hidden until the list has measured it: try again for a few
    // frames, unless another row has been asked for since.
    let frames = 0;
    const focus = () => {
      if (!el.isConnected || this.current !== position) return;
      el.focus();
      if (document.activeElement !== el && frames++ < 30) requestAnimationFrame(focus);
    };
    focus();
    return unmount;
  };

  /** Arrow keys, Page Up/Down, Home and End on the list; `list` is the VList. */
  keydown(e: KeyboardEvent, list: ScrollsToIndex | undefined, page = 10): void {
    const n = this.count();
    if (n === 0) return;
    const steps: Record<string, number> = { ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page };
    let next: number;
    if (e.key in steps) next = this.current + steps[e.key]!;
    else if (e.key === 'Home') next = 0;
    else if (e.key === 'End') next = n - 1;
    else return;
    e.preventDefault();
    next = Math.max(0, Math.min(n - 1, next));
    this.current = next;
    this.pending = next;
    list?.scrollToIndex(next, { align: 'nearest' });
  }
}
