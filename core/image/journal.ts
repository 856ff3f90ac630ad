// The journal of writes: every write an engine operation makes, in order, with its purpose, the
// flush barriers, and which write was the commit point. It is how the UI teaches crash safety and
// how a user sees exactly what an operation did to the file.

export interface JournalEntry {
  kind: 'write' | 'flush' | 'truncate';
  /** Host offset (write) or new size (truncate). */
  offset: number;
  length: number;
  /** What the write is for, in the spec's words ("refcount block 0", "active L1 table", ...). */
  purpose: string;
  /** The single write that makes the operation visible (docs/architecture.md §3). */
  commit?: boolean;
}

export class Journal {
  readonly operation: string;
  readonly entries: JournalEntry[] = [];

  constructor(operation: string) {
    this.operation = operation;
  }

  write(offset: number, length: number, purpose: string, commit = false): void {
    this.entries.push({ kind: 'write', offset, length, purpose, ...(commit ? { commit } : {}) });
  }

  flush(purpose = 'barrier'): void {
    this.entries.push({ kind: 'flush', offset: 0, length: 0, purpose });
  }

  truncate(size: number, purpose: string): void {
    this.entries.push({ kind: 'truncate', offset: size, length: 0, purpose });
  }

  get writeCount(): number {
    return this.entries.filter((e) => e.kind === 'write').length;
  }
}
