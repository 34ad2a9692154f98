"""serve: index folder(s) [+ an images table] -> clip-retrieval's HTTP API (/knn-service, /indices-list,
/metadata) and a search page with thumbnails, on 127.0.0.1 by default."""
