// A count of the metadata entries the engine decodes, for a caller that budgets work (the fuzz
// harness, tests/fuzz/budget.ts): a loop that goes round tables already in memory neither reads
// nor allocates, so only a count of what it decodes can stop it. Counted where tables are handed
// to the engine's walkers: each table yielded by a batched scan and each cached L2 table or
// refcount block taken from a TableCache (its bytes / 8: one 8-byte entry, or one 64-bit word of
// refcounts), and each snapshot table entry parsed. Nothing is counted unless a counter is set;
// the cost is one comparison per table.
let counter: ((entries: number) => void) | null = null;

/** Install (or, with null, remove) the function told of every batch of decoded entries. */
export function countEntriesWith(fn: ((entries: number) => void) | null): void {
  counter = fn;
}

/** Tell the counter, if any, that `entries` more entries are decoded. */
export function entriesDecoded(entries: number): void {
  if (counter !== null) counter(entries);
}
