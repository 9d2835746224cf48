import { relative } from 'node:path'
import { BaseSequencer, type TestSpecification } from 'vitest/node'

/**
 * The test files that took longest in CI (seconds on the two-core machine, December 2026),
 * slowest first. Only the order of the run depends on this list, never a result: a stale entry
 * costs some minutes at worst.
 *
 * Why: a fresh clone has no Vitest results cache, so Vitest orders files by size, and the crash
 * tests (small files that spawn and kill processes for a minute) started last; the two workers
 * then finished one by one on them while the rest of the suite was done. Starting the long
 * files first lets the short ones fill the gaps (longest-processing-time-first scheduling).
 */
export const slowestTestFiles: readonly string[] = [
  'test/brokers/rabbitmq.test.ts',
  'test/idempotency/crash/idempotency.crash.test.ts',
  'test/outbox/crash/relay-process-postgres.crash.test.ts',
  'test/saga/crash-postgres.test.ts',
  'test/outbox/crash/relay-process-sqlite.crash.test.ts',
  'test/outbox/crash.test.ts',
  'test/examples/shop/chaos-postgres-nats.test.ts',
  'test/saga/choreography.interleavings.test.ts',
  'test/examples/shop/dashboard.test.ts',
  'test/examples/shop/chaos-sqlite.test.ts',
  'test/saga/worker-cli.test.ts',
  'test/examples/shop/checker.test.ts',
  'test/cqrs/command-handler.interleavings.test.ts',
  'test/proxy/e2e/proxy.e2e.test.ts',
  'test/examples/shop/shutdown.test.ts',
  'test/outbox/relay.model.test.ts',
  'test/cqrs/projection.crash.test.ts',
  'test/saga/crash-sqlite.test.ts',
]

/**
 * Puts the items whose path is in {@link slowestTestFiles} first, in the list's order, and keeps
 * the others in their given order after them.
 */
export function orderSlowestFirst<T>(items: readonly T[], pathOf: (item: T) => string): T[] {
  const rank = (item: T): number => {
    const index = slowestTestFiles.indexOf(pathOf(item))
    return index === -1 ? slowestTestFiles.length : index
  }
  // Array.prototype.sort is stable, so files outside the list keep their order.
  return [...items].sort((a, b) => rank(a) - rank(b))
}

/**
 * Runs the files of {@link slowestTestFiles} first, in that order, then every other file in
 * Vitest's own order (failed first, then longest first from its cache, or largest first).
 */
export default class SlowestFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    return orderSlowestFirst(await super.sort(files), (file) =>
      relative(file.project.config.root, file.moduleId),
    )
  }
}
