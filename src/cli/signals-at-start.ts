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
