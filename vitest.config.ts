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
    // A worker runs its files one after another in one module graph instead of importing the
    // sources again for each of the 660 files: that import took 290 of the suite's 1,700
    // worker-seconds (a 16-minute run became 12.5). What a file changes in the process must
    // therefore be undone by the file: spies are restored (restoreAllMocks in afterEach), env
    // stubs are undone here, a global OpenTelemetry provider is replaced (breakwater makes its
    // instruments again for a new provider), listeners are removed. A file that cannot share
    // the graph belongs in a project of its own with `isolate: true`.
    isolate: false,
    unstubEnvs: true,
    // Long files first, so the short ones fill the gaps at the end (see the sequencer's docs).
    sequence: { sequencer: SlowestFirstSequencer },
  },
})
