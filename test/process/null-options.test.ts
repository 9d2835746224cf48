// `null` for a runUntilSignal option was taken as its default wherever it was read with
// `?? default` (drainTimeoutMs: null drained for 30 s, signals: null listened for SIGTERM and
// SIGINT, target: null listened on the process). Only undefined (or leaving it out) means the
// default: every option given as null is refused before start is called, with INVALID_OPTION
// naming it. The service ends itself at once, so a run that did start returns.
import { EventEmitter } from 'node:events'
import { describe, it } from 'vitest'
import { runUntilSignal } from '../../src/process/index.js'
import { runUntilSignalOptions } from '../../src/process/run-until-signal.js'
import { ManualClock } from '../../src/testing/index.js'
import {
  expectNullOptionsRefused,
  expectUndefinedOptionsAccepted,
  type NullOptionCase,
} from '../support/null-option.js'

const bag: NullOptionCase = {
  build: (o) =>
    runUntilSignal(() => ({ done: Promise.resolve(), stop: async () => {} }), o as never),
  good: { target: new EventEmitter(), clock: new ManualClock() },
  keys: runUntilSignalOptions,
  prefix: 'runUntilSignal',
}

describe('runUntilSignal options given as null', () => {
  it('refuses each option given as null', () => expectNullOptionsRefused(bag))

  // target: undefined listens on the process for the moment the service runs (it ends at once).
  it('takes each option given as undefined', () => expectUndefinedOptionsAccepted(bag))
})
