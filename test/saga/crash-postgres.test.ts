// The saga crash test on PostgreSQL (worker processes claiming with SKIP LOCKED); see crash-tests.ts.
import { crashTests } from './crash-tests.js'
import { postgresDb } from './databases.js'

crashTests(postgresDb)
