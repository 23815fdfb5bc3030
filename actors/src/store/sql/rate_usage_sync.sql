-- Adds this instance's admitted requests ($1 client, $2 window, $3 count) and returns the
-- cluster totals of the windows from $5 of every client in $4. The second branch reads the
-- snapshot before the insert; the caller keeps the larger of two answers for one row.
WITH input AS (
    SELECT client, win, requests
    FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS t(client, win, requests)
    ORDER BY client, win
), added AS (
    INSERT INTO http_rate_usage AS usage (client, win, requests)
    SELECT client, win, requests FROM input
    ON CONFLICT (client, win) DO UPDATE SET requests = usage.requests + excluded.requests
    RETURNING client, win, requests
)
SELECT client, win, requests FROM added
UNION ALL
SELECT client, win, requests FROM http_rate_usage
WHERE client = ANY($4::bytea[]) AND win >= $5
