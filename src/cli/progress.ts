/**
 * Progress bars for long work (builds, many verification cases), shown only on a terminal and
 * only once the work has run for `delayMs` (default 1 s), so quick runs stay quiet.
 */
import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

export function progress(label: string, delayMs = 1000): Progress {
  const started = Date.now();
  let bar: cliProgress.SingleBar | undefined;
  const tty = process.stderr.isTTY === true;
  return {
    update(done, total) {
      if (!tty) return;
      if (bar === undefined) {
        if (Date.now() - started < delayMs || done >= total) return;
        bar = new cliProgress.SingleBar(
          { format: `${label} [{bar}] {value}/{total} {percentage}% eta {eta}s`, stream: process.stderr, hideCursor: true },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, done);
      }
      bar.setTotal(total);
      bar.update(done);
    },
    stop() {
      bar?.stop();
      bar = undefined;
    },
  };
}
