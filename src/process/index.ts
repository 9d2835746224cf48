// Process lifecycle helpers for breakwater's long-running commands (relay, saga worker, proxy).

export type {
  RunningService,
  RunOutcome,
  RunUntilSignalOptions,
  SignalTarget,
} from './run-until-signal.js'
export { runUntilSignal } from './run-until-signal.js'
