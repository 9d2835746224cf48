// The verdict every relay-process crash run must pass (see crash-harness.ts).
import { expect } from 'vitest'
import type { CrashReport } from './crash-harness.js'

const sorted = (ids: Iterable<string>): string[] => [...ids].sort()

/** Asserts what the issue asks of a crash run, from the checker and both databases. */
export function expectSound(report: CrashReport): void {
  const { verdict, consumer, kills, scenario } = report
  // The queue checker: nothing committed is lost, nothing rolled back or unknown appears, and
  // per aggregate the first deliveries follow the commit order.
  expect(verdict.lost).toEqual([])
  expect(verdict.unexpected).toEqual([])
  expect(verdict.orderViolations).toEqual([])
  expect(verdict.valid).toBe(true)
  // The producer's database agrees: every business row has its event and the other way round,
  // every event in the outbox was delivered and is marked published, and an unknown outcome
  // was delivered exactly when it had committed.
  expect(sorted(report.businessIds)).toEqual(sorted(report.outboxIds))
  expect(report.outboxIds.size).toBe(verdict.committed + report.unknownCommitted.length)
  expect(report.unpublished).toBe(0)
  expect(sorted(verdict.recovered)).toEqual(sorted(report.unknownCommitted))
  // Duplicates: only a kill between a confirmed publish and its mark republishes, at most the
  // batch in hand; every kill at after-publish republished something.
  expect(report.relayDuplicates).toBeLessThanOrEqual(kills.total * scenario.batchSize)
  expect(report.relayDuplicates).toBeGreaterThanOrEqual(kills.atAfterPublish)
  // The inbox-backed consumer applied each committed event exactly once, in order.
  expect(consumer.appliedTwice).toEqual([])
  expect(consumer.applications).toBe(report.outboxIds.size)
  expect(sorted(consumer.appliedIds)).toEqual(sorted(report.outboxIds))
  expect(consumer.counterTotal).toBe(report.outboxIds.size)
  expect(consumer.counterMismatches).toEqual([])
  expect(consumer.outOfOrder).toBe(0)
  // The last relay stopped gracefully on SIGTERM.
  expect(report.gracefulStop).toBe(true)
}
