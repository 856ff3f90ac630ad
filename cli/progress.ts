// qemu-img's -p progress line (util/qemu-progress.c, the simple printer): "    (NN.NN/100%)\r" on
// stdout whenever the progress has moved by at least the verb's minimum step (and at 0 and 100),
// and a newline when the operation ends. Disabled when -p is not given or -q is.
export interface Progress {
  /** Report `done` of `total` units. */
  update(done: number, total: number): void;
  /** The final newline. */
  end(): void;
}

export function progressLine(enabled: boolean, minStep: number, write: (s: string) => void): Progress {
  let last = -Infinity;
  const print = (pct: number): void => {
    write(`    (${pct.toFixed(2)}/100%)\r`);
    last = pct;
  };
  if (enabled) print(0);
  return {
    update(done, total) {
      if (!enabled) return;
      const pct = total > 0 ? Math.min(100, (done / total) * 100) : 100;
      if (pct - last >= minStep || (pct === 100 && last !== 100)) print(pct);
    },
    end() {
      if (enabled) write('\n');
    },
  };
}
