// A big table fetched from the worker a page at a time as rows scroll into view (L1 table,
// refcount table). Pages are kept once loaded; `version` changes when a page arrives.
import { errorText } from './errors.ts';

export const PAGE = 1024;

export class PagedTable<T> {
  total = $state(0);
  version = $state(0);
  error = $state.raw<string | null>(null);
  private pages = new Map<number, T[]>();
  private loading = new Set<number>();
  private readonly fetchPage: (start: number, count: number) => Promise<{ total: number; entries: T[] }>;

  constructor(total: number, fetchPage: (start: number, count: number) => Promise<{ total: number; entries: T[] }>) {
    this.total = total;
    this.fetchPage = fetchPage;
  }

  /** The entry at `i`, or undefined while its page loads (the load starts after this render). */
  get(i: number): T | undefined {
    void this.version;
    const p = Math.floor(i / PAGE);
    const page = this.pages.get(p);
    if (page) return page[i - p * PAGE];
    if (!this.loading.has(p) && !this.error) {
      this.loading.add(p);
      queueMicrotask(() => void this.load(p));
    }
    return undefined;
  }

  private async load(p: number): Promise<void> {
    try {
      const r = await this.fetchPage(p * PAGE, PAGE);
      this.pages.set(p, r.entries);
      this.total = r.total;
      this.version++;
    } catch (e) {
      this.error = errorText(e);
    } finally {
      this.loading.delete(p);
    }
  }
}
