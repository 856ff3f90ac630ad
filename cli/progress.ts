// qemu-img's -p progress (util/qemu-progress.c, its simple printer) on stdout: "    (NN.NN/100%)\r"
// whenever the progress has grown by more than the verb's minimum step since the last line (and
// at 0 and 100), and a newline when the verb ends. The arithmetic is QEMU's, in single precision
// (a float `current` advanced by `delta / 100 * max`), so the same steps print the same lines.
// Without -p (or with -q) nothing is printed. It prints through the verb's stdout writer.
const f32 = Math.fround;

/** printf("%3.2f") of a float: to two decimals, an exact tie to even (as glibc rounds). */
function twoDecimals(x: number): string {
  const t = x * 1000; // exact for a float
  if (Number.isInteger(t) && Math.abs(t) % 10 === 5) {
    const down = Math.floor(t / 10);
    return ((down % 2 === 0 ? down : down + 1) / 100).toFixed(2);
  }
  return x.toFixed(2);
}

export class Progress {
  private current = 0;
  private lastPrint = 0;
  constructor(
    private readonly enabled: boolean,
    private readonly minSkip: number,
    private readonly write: (s: string) => void,
  ) {}

  /** qemu_progress_print(delta, max). */
  print(delta: number, max: number): void {
    let current = max === 0 ? f32(delta) : f32(this.current + f32(f32(f32(delta) / 100) * max));
    if (current > 100) current = 100;
    this.current = current;
    if (current > f32(this.lastPrint + this.minSkip) || current === 100 || current === 0) {
      this.lastPrint = current;
      if (this.enabled) this.write(`    (${twoDecimals(current)}/100%)\r`);
    }
  }

  /** QEMU's `((float) done / total) * 100` step, as the loops of img_compare report it. */
  step(done: number, total: number): void {
    this.print(f32(f32(f32(done) / f32(total)) * 100), 100);
  }

  /** qemu_progress_end(). */
  end(): void {
    if (this.enabled) this.write('\n');
  }
}
