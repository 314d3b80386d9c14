-- Full-text search of message bodies (the database search backend, used when
-- MEILI_URL is unset).
--
-- The body's collation becomes case-insensitive (utf8mb4_unicode_ci) so that
-- the FULLTEXT index matches words regardless of case; a collation governs
-- comparisons only, so bodies are still stored and returned byte for byte.
-- InnoDB's built-in parser splits words on spaces and punctuation, ignores
-- words shorter than innodb_ft_min_token_size (3 characters by default) and
-- the words of its stopword list, and has no typo tolerance.
ALTER TABLE messages
    MODIFY body MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
    ADD FULLTEXT INDEX messages_body_fulltext (body);
