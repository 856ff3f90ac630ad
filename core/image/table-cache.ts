// A bounded LRU of cluster-sized metadata tables (L2 tables, refcount blocks) keyed by host
// offset, like QEMU's qcow2-cache: memory stays bounded whatever the image size. Entries are the
// authoritative in-memory copy; writers update them in place and write them through.
import { entriesDecoded } from '../work-count.ts';

export class TableCache {
  private readonly map = new Map<number, Uint8Array>();
  private bytes = 0;
  readonly capacityBytes: number;
  hits = 0;
  misses = 0;

  constructor(capacityBytes: number) {
    this.capacityBytes = capacityBytes;
  }

  get(offset: number): Uint8Array | undefined {
    const t = this.map.get(offset);
    if (t) {
      this.hits++;
      entriesDecoded(t.length / 8);
      // refresh recency: Map keeps insertion order
      this.map.delete(offset);
      this.map.set(offset, t);
    } else {
      this.misses++;
    }
    return t;
  }

  set(offset: number, table: Uint8Array): void {
    const old = this.map.get(offset);
    if (old) {
      this.bytes -= old.length;
      this.map.delete(offset);
    }
    this.map.set(offset, table);
    this.bytes += table.length;
    while (this.bytes > this.capacityBytes && this.map.size > 1) {
      const first = this.map.keys().next().value as number;
      this.bytes -= this.map.get(first)!.length;
      this.map.delete(first);
    }
  }

  delete(offset: number): void {
    const old = this.map.get(offset);
    if (old) {
      this.bytes -= old.length;
      this.map.delete(offset);
    }
  }

  clear(): void {
    this.map.clear();
    this.bytes = 0;
  }

  get sizeBytes(): number {
    return this.bytes;
  }
}
