DELETE FROM http_rate_usage WHERE win < $1
