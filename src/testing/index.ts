// Helpers for users' own tests (and ours): time that only moves when the test moves it.
export { flushJobs, ManualClock } from './manual-clock.js'
