// Runs a CLI command's entry point in-process, with its output captured.
import { EventEmitter } from 'node:events'

/** Where a command writes. */
interface Sink {
  write(text: string): unknown
}

/** A command entry point that takes its output sinks as deps (outboxCommand, sagaCommand...). */
export type CapturedEntry = (
  args: string[],
  deps: { readonly stdout: Sink; readonly stderr: Sink },
) => Promise<number>

/** Runs `entry` with `args`; resolves to its exit code and everything it printed. */
export async function runCaptured(
  entry: CapturedEntry,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const printed = { stdout: '', stderr: '' }
  const sink = (to: keyof typeof printed): Sink => ({
    write: (text: string) => {
      printed[to] += text
    },
  })
  const code = await entry(args, { stdout: sink('stdout'), stderr: sink('stderr') })
  return { code, ...printed }
}

/**
 * The deps of a long-running command run in-process (relay, saga worker): its JSON log lines
 * parsed, its stderr, the codes it passed to `exit`, and signals nobody sends unless the test
 * emits them.
 */
export function captureLongRunning() {
  const lines: Record<string, unknown>[] = []
  const exits: number[] = []
  let stderr = ''
  const signals = new EventEmitter()
  return {
    lines,
    exits,
    signals,
    stderr: () => stderr,
    deps: {
      stdout: {
        write: (t: string) => {
          for (const l of t.split('\n')) if (l.startsWith('{')) lines.push(JSON.parse(l))
        },
      },
      stderr: { write: (t: string) => (stderr += t) },
      env: {},
      signals,
      exit: (code: number) => exits.push(code),
    },
  }
}
