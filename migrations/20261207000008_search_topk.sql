-- Top-k retrieval for the term index (issue 38): a search reads about what
-- its page needs instead of every posting of its terms in the chat.
--
-- 1. Each term's document frequency per chat (BM25's df), kept by the
--    search indexer in the transaction that writes the postings: a search
--    needs every query term's idf before it reads a single posting, and
--    counting 500,000 postings of a common word to learn it would cost what
--    ranking them did. Filled here from the postings already indexed.
CREATE TABLE search_terms (
    chat_id   BIGINT UNSIGNED NOT NULL,
    term      BIGINT UNSIGNED NOT NULL,
    documents BIGINT NOT NULL,
    PRIMARY KEY (chat_id, term)
) ENGINE = InnoDB;

INSERT INTO search_terms (chat_id, term, documents)
SELECT chat_id, term, COUNT(*) FROM search_postings GROUP BY chat_id, term;

-- 2. Each term's postings in impact order: with BM25's b = 0 a posting's
--    contribution grows with its tf alone, so (tf descending, number) is
--    the order of a one-term ranking (ties by number) and the sorted access
--    of the threshold algorithm for several terms (src/store/search/terms.rs).
--    An online ALTER: InnoDB builds the index without blocking writes.
ALTER TABLE search_postings
    ADD KEY search_postings_impact (chat_id, term, tf DESC, number);
