import { migrateCommand } from './migrate.js'

/** `breakwater migrate`: applies the migrations of every durable capability. */
export async function migrateEntry(args: string[]): Promise<number> {
  // Capabilities register their migrations here as they land.
  return migrateCommand(args, { capabilities: {} })
}
