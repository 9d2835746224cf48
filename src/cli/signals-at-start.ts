// Imported by main.ts for its side effect, before any other module it loads: a command that
// drains on SIGTERM and SIGINT has them held from the first moment breakwater's code runs, and
// SIGHUP with them (each such command handles it once running, or gives it back). Until a
// process listens for them, Node gives them their default action (the process ends with 143,
// 130 for SIGINT, 129 for SIGHUP), and main.ts's own imports take tens of milliseconds before
// its body runs. What is left is Node's own start, before any of this code runs.
import { type HeldSignals, holdSignals } from './held-signals.js'

/**
 * Whether `argv` (the process's arguments after the script) runs a command that drains on
 * SIGTERM and SIGINT: the relay, `saga worker`, the proxy and the demo (which give them back
 * where they have no graceful stop: `demo policies`, `proxy --check`). main.ts loads exactly
 * these with {@link takeHeldAtStart}.
 */
function drainsOnSignal(argv: readonly string[]): boolean {
  const [command, sub] = argv
  return (
    command === 'relay' ||
    command === 'proxy' ||
    command === 'demo' ||
    (command === 'saga' && sub === 'worker')
  )
}

let heldAtStart: HeldSignals | undefined = drainsOnSignal(process.argv.slice(2))
  ? holdSignals()
  : undefined

/** The signals held since this module loaded, once (undefined after, or when none were). */
export function takeHeldAtStart(): HeldSignals | undefined {
  const held = heldAtStart
  heldAtStart = undefined
  return held
}

// After the command has finished and its exit code is decided, the process ends once what is
// still open lets it (sockets closing, a user's saga module with a timer it never clears). A
// SIGTERM or Ctrl-C then found no listener and got its default action, 143 or 130, as if the
// work had been cut short. This listener, on from the start, ends the process with the
// command's code then. It is on from the start, not added at the end, because a signal the OS
// delivered while the command's own handler was still on, but dispatched after that handler
// was removed, is dropped when no listener is left in between (the process then lingers).
// Until the command has finished it stands aside: when it is the only listener, nothing else
// takes the signal (a command without a graceful stop, `migrate`; one whose handlers are not
// on), so it gives the signal its default action, as if it were not there.
let finished = false
function afterFinish(signal: NodeJS.Signals): void {
  if (finished) process.exit()
  else if (process.listenerCount(signal) === 1) {
    process.off('SIGTERM', afterFinish)
    process.off('SIGINT', afterFinish)
    process.kill(process.pid, signal)
  }
}
process.on('SIGTERM', afterFinish)
process.on('SIGINT', afterFinish)

/**
 * Marks the command finished, its code in `process.exitCode`: a SIGTERM or SIGINT from now on
 * ends the process with that code at once.
 */
export function commandFinished(): void {
  finished = true
}
