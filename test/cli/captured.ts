// Runs a CLI command's entry point in-process, with its output captured.

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
