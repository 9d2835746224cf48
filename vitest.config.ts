import { defineConfig } from 'vitest/config'
import SlowestFirstSequencer from './test/support/slowest-first-sequencer.js'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    setupFiles: ['test/support/fast-check-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // expect.poll waits on real servers and child processes; on the shared two-core CI machine a
    // round trip can take seconds, so the one-second default would fail correct code.
    expect: { poll: { timeout: 10_000 } },
    // Two cores on CI: more workers than that only adds contention to the real servers.
    maxWorkers: 2,
    // Long files first, so the short ones fill the gaps at the end (see the sequencer's docs).
    sequence: { sequencer: SlowestFirstSequencer },
  },
})
