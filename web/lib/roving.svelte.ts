// Keyboard movement in a long virtual list (L1, L2, refcount table and block): one row is the
// list's single Tab stop, so Tab passes a list of 8,192 rows in one step instead of thousands;
// arrow keys, Page Up/Down, Home and End move among the rows (scrolling them into view first).
// Rows carry data-row={position}, tabindex and {@attach keys.row(position)}; the list element
// gets onfocusin and onkeydown.
export interface ScrollsToIndex {
  scrollToIndex(i: number, o?: { align?: 'start' | 'center' | 'end' | 'nearest' }): void;
}

export class RovingRows {
  /** Position of the row that is the Tab stop. */
  current = $state(0);
  private readonly count: () => number;

  constructor(count: () => number) {
    this.count = count;
  }

  tabindex(position: number): 0 | -1 {
    return position === Math.min(this.current, Math.max(0, this.count() - 1)) ? 0 : -1;
  }

  /** A row focused any way (click, Tab) becomes the Tab stop. */
  focusin = (e: FocusEvent): void => {
    const p = Number((e.target as HTMLElement | null)?.dataset?.row);
    if (Number.isInteger(p)) this.current = p;
  };

  /** The row to focus as soon as it is rendered (the list renders a scrolled window later). */
  private pending = $state(-1);

  /** Attachment for the row at `position` ({@attach keys.row(i)}): takes focus when asked to. */
  row = (position: number) => (el: HTMLElement): void => {
    if (this.pending !== position) return;
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
