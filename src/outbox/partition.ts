/**
 * How many partitions the outbox spreads aggregates over. Fixed by the `outbox` migration: the
 * partitions table holds exactly this many rows and every outbox row stores
 * `partitionOf(aggregateId)`. Relays lease partitions, so this is also the most relays that can
 * publish at once. Changing it needs a migration that renumbers the unpublished rows.
 */
export const OUTBOX_PARTITIONS = 64

const encoder = new TextEncoder()

/**
 * The partition of an aggregate: 32-bit FNV-1a of the aggregate id's UTF-8 bytes, modulo
 * {@link OUTBOX_PARTITIONS}. Stable across processes, releases and languages, so any writer
 * (even one in another language that writes outbox rows itself) agrees on it.
 *
 * @example
 * ```ts
 * import { partitionOf } from 'breakwater/outbox'
 * partitionOf('order-42') // a number in [0, 64)
 * ```
 */
export function partitionOf(aggregateId: string): number {
  let hash = 0x811c9dc5
  // ASCII ids (the usual uuids and numbers) skip the encoder's allocation.
  let ascii = true
  for (let i = 0; i < aggregateId.length; i++) {
    if (aggregateId.charCodeAt(i) > 0x7f) {
      ascii = false
      break
    }
  }
  if (ascii) {
    for (let i = 0; i < aggregateId.length; i++) {
      hash = Math.imul(hash ^ aggregateId.charCodeAt(i), 0x01000193)
    }
  } else {
    for (const byte of encoder.encode(aggregateId)) hash = Math.imul(hash ^ byte, 0x01000193)
  }
  return (hash >>> 0) % OUTBOX_PARTITIONS
}
