// The verdict every relay-process crash run must pass (see crash-harness.ts).
import { expect } from 'vitest'
import type { CrashReport } from './crash-harness.js'

const sorted = (ids: Iterable<string>): string[] => [...ids].sort()

/** Ids in `a` and not in `b` (first 20), so a failure names them instead of diffing 100,000. */
function minus(a: Iterable<string>, b: ReadonlySet<string>): string[] {
  return [...a].filter((id) => !b.has(id)).slice(0, 20)
}

/** Asserts what the issue asks of a crash run, from the checker and both databases. */
export function expectSound(report: CrashReport): void {
  const { verdict, consumer, kills, scenario } = report
  // The queue checker: nothing committed is lost, nothing rolled back or unknown appears, and
  // per aggregate the first deliveries follow the commit order.
  expect(verdict.lost.slice(0, 20)).toEqual([])
  expect(verdict.unexpected.slice(0, 20)).toEqual([])
  // Order as the relays published it (first confirmations), then as the consumer saw it.
  expect(report.relayVerdict.orderViolations.slice(0, 20)).toEqual([])
  expect(report.relayVerdict.lost.slice(0, 20)).toEqual([])
  expect(verdict.orderViolations.slice(0, 20)).toEqual([])
  expect(verdict.valid).toBe(true)
  // The producer's database agrees: every business row has its event and the other way round,
  // every event in the outbox was delivered and is marked published, and an unknown outcome
  // was delivered exactly when it had committed.
  expect(minus(report.businessIds, report.outboxIds)).toEqual([])
  expect(minus(report.outboxIds, report.businessIds)).toEqual([])
  expect(report.outboxIds.size).toBe(verdict.committed + report.unknownCommitted.length)
  expect(report.unpublished).toBe(0)
  expect(sorted(verdict.recovered)).toEqual(sorted(report.unknownCommitted))
  // Duplicates: only a kill between a confirmed publish and its mark republishes, at most the
  // batch in hand; every kill at after-publish republished something.
  expect(report.relayDuplicates).toBeLessThanOrEqual(kills.total * scenario.batchSize)
  expect(report.relayDuplicates).toBeGreaterThanOrEqual(kills.atAfterPublish)
  // The inbox-backed consumer applied each committed event exactly once, in order.
  expect(consumer.appliedTwice.slice(0, 20)).toEqual([])
  expect(consumer.applications).toBe(report.outboxIds.size)
  expect(minus(consumer.appliedIds, report.outboxIds)).toEqual([])
  expect(minus(report.outboxIds, consumer.appliedIds)).toEqual([])
  expect(consumer.counterTotal).toBe(report.outboxIds.size)
  expect(consumer.counterMismatches.slice(0, 20)).toEqual([])
  expect(consumer.outOfOrder).toBe(0)
  // The last relay stopped gracefully on SIGTERM.
  expect(report.gracefulStop).toBe(true)
}
